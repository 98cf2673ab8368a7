"""The worker pool: ``--workers N`` processes on one storage, each with its share of the GPUs or the cores.

Each worker is ``dyt-lab study _worker``, a process of its own running ``worker.work``; they meet only in
the storage and the study folder's ask lock. A worker dies with the launcher (``die_with_parent``), and
Ctrl-C or SIGTERM to the launcher reaches every worker, so no trial outlives the command that started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from dyt_lab.errors import EXIT_INTERRUPTED
from dyt_lab.study.definition.study_file import SPEC_FILE, StudySpec
from dyt_lab.study.engine.worker import interrupt_on_sigterm, work
from dyt_lab.study.trial.protocol import die_with_parent


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_gpus(gpus: list[str], workers: int, index: int) -> list[str]:
    """Worker ``index``'s share: GPUs dealt round-robin, or one shared GPU when workers outnumber them."""
    if not gpus:
        return []
    return gpus[index::workers] if workers <= len(gpus) else [gpus[index % len(gpus)]]


def spawn_workers(spec: StudySpec, gpus: list[str]) -> int:
    """Start ``spec.workers`` worker processes on the shared storage and wait for them; return their exit code."""
    spec_path = spec.folder / SPEC_FILE
    procs = []
    for index in range(spec.workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(worker_gpus(gpus, spec.workers, index))
        elif "OMP_NUM_THREADS" not in env:  # CPU trials side by side: share the cores, do not fight
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.workers))
        command = [sys.executable, "-m", "dyt_lab", "study", "_worker", str(spec_path), str(index),
                   str(spec.workers), str(os.getpid())]
        procs.append(subprocess.Popen(command, env=env))
    interrupt_on_sigterm()
    try:
        codes = [proc.wait() for proc in procs]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too; a SIGTERM did not: pass it on
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait() for proc in procs]
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return max(codes)


def run_worker(spec_path: str, index: int, workers: int, launcher: int) -> None:
    """``dyt-lab study _worker``: one of the processes ``--workers N`` starts (checked by the launcher)."""
    from dyt_lab.study.definition.study_file import load_spec

    die_with_parent(launcher)  # a killed launcher takes its workers (and their trials) with it
    code = work(load_spec(["--config", spec_path]), index, workers)
    if code:
        raise SystemExit(code)
