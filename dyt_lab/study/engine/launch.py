"""How a trial's ``dyt-lab fit`` starts: forked from a warm process, or as a fresh Python process.

A fresh process pays for ``import torch`` and ``import lightning`` before its first batch, on
every trial. ``warm`` isolation instead keeps one fork server per study worker, the stdlib's
``multiprocessing`` forkserver, which imports torch, Lightning and dyt_lab once, parses the study's
base config once (``prewarm.py``: what a process pays on its first parse, each trial would pay
again), and forks a child per trial. The child is still a process of its own: ``kill -9`` ends it
alone, its memory is freed when it exits, and a crash cannot take the worker down. The traps of
forking a framework, and why they do not bite here:

- the fork server only imports and parses: no torch op runs in it, so no OpenMP pool, no CUDA
  context and no thread exists when it forks (CUDA initialised before a fork would break every child);
- each child sets its own thread count, environment, working folder and output files;
- the child's RNGs are seeded by the run itself (``seed_everything``), not inherited;
- Python's forkserver restores default signal handlers in each child, so Ctrl-C and SIGTERM
  reach the trial as they reach a fresh process;
- the child dies with the fork server (``die_with_parent``), which exits when its worker dies.

Trials that must start clean (DDP trials start their own processes) use ``process`` isolation.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.forkserver
import os
import subprocess
import sys
from pathlib import Path

from dyt_lab.study.engine.prewarm import WARM_ARGS_ENV
from dyt_lab.study.trial.protocol import TRIAL_ENV

ISOLATIONS = ("warm", "process")
# What a trial imports before its first batch; importing them in the fork server is most of the saving.
WARM_IMPORTS = ["torch", "torchvision", "lightning.pytorch", "lightning.pytorch.cli", "jsonargparse", "torchmetrics",
                "tensorboard", "optuna", "sklearn.datasets", "dyt_lab.runs", "dyt_lab.training",
                "dyt_lab.data", "dyt_lab.models", "dyt_lab.norms", "dyt_lab.study.trial.pruning",
                # the pruning callback opens the storage, and Optuna imports what a database needs on first use
                "sqlalchemy", "sqlalchemy.orm", "sqlalchemy.dialects.sqlite", "sqlalchemy.dialects.postgresql",
                "psycopg2", "alembic.command", "alembic.config", "alembic.migration", "alembic.script",
                "dyt_lab.study.engine.prewarm"]  # last: it parses the base config, then freezes the heap
_forkserver = None  # this worker's fork server context, started on first use


def fit_command(fit_args: list[str]) -> list[str]:
    """The shell command that runs the same trial by hand (what command.txt holds)."""
    return [sys.executable, "-m", "dyt_lab", "fit", *fit_args]


def start_trial(isolation: str, fit_args: list[str], env: dict[str, str], run_dir: Path):
    """Start one trial's fit; the handle has ``pid``, ``wait(timeout)``, ``send_signal`` and ``kill``."""
    out, err = run_dir / "stdout.log", run_dir / "stderr.log"
    if isolation == "process":
        with open(out, "w") as stdout, open(err, "w") as stderr:  # the child keeps its own copies
            return subprocess.Popen(fit_command(fit_args), stdout=stdout, stderr=stderr, env=env)
    process = warm_up().Process(target=_warm_fit, args=(fit_args, env, str(out), str(err), os.getcwd()),
                                  name="dyt-lab-trial", daemon=False)
    process.start()
    return WarmTrial(process)


def warm_up(fit_args: list[str] | None = None) -> multiprocessing.context.ForkServerContext:
    """Start this process's fork server now, so that its imports overlap the work before the first trial.

    ``fit_args``: what every trial's fit shares (the base configs and fixed keys), for it to parse once.
    """
    global _forkserver
    if _forkserver is None:
        _forkserver = multiprocessing.get_context("forkserver")
        _forkserver.set_forkserver_preload(WARM_IMPORTS)  # an import that fails is skipped, not fatal
        os.environ[WARM_ARGS_ENV] = json.dumps(fit_args or [])
        try:  # the fork server takes this process's environment when it starts, and only then
            multiprocessing.forkserver.ensure_running()
        finally:
            del os.environ[WARM_ARGS_ENV]
    return _forkserver


class WarmTrial:
    """A forked trial behind the part of ``subprocess.Popen``'s interface that the worker uses."""

    def __init__(self, process: multiprocessing.Process) -> None:
        self.process = process
        self.pid = process.pid

    def wait(self, timeout: float | None = None) -> int:
        """The exit code (negative: killed by that signal), or ``TimeoutExpired`` as Popen raises it."""
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("dyt-lab fit", timeout)
        return self.process.exitcode

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the trial if it still runs."""
        if self.process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the trial."""
        self.process.kill()


def _warm_fit(fit_args: list[str], env: dict[str, str], stdout: str, stderr: str, cwd: str) -> None:
    """In the forked child: become the trial's process (env, folder, output, threads), then run fit."""
    from dyt_lab.study.trial.protocol import die_with_parent

    die_with_parent()  # the fork server's death (its worker was killed) ends this trial too
    os.environ.clear()
    os.environ.update(env)
    binding = json.loads(env.get(TRIAL_ENV, "null"))
    if binding:  # the callback checks that its parent is alive: here that parent is the fork server
        os.environ[TRIAL_ENV] = json.dumps({**binding, "parent_pid": os.getppid()})
    os.chdir(cwd)
    for stream, path in ((sys.stdout, stdout), (sys.stderr, stderr)):
        stream.flush()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, stream.fileno())
        os.close(fd)
        stream.reconfigure(line_buffering=True)
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # libgomp read it at import, in the fork server
        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    sys.argv = ["dyt-lab", "fit", *fit_args]  # as a fresh `dyt-lab fit ...` would see it
    from dyt_lab.errors import one_line_errors
    from dyt_lab.runs import run_lightning
    from dyt_lab.study.trial.protocol import record_failure

    with one_line_errors(record_failure):  # as `dyt-lab fit` ends; SystemExit(code) becomes the exit code
        run_lightning(["fit", *fit_args])
