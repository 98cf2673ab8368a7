"""Two workers with one thread each, or one worker with every thread? The bn_factors study, side by side.

    python benchmarks/study_threads.py             # 4 seed runs of 3 epochs per arm (~5 min on 2 cores)

Both arms run the same slice of ``configs/study/bn_factors.yaml`` (2 configurations x 2 seeds, 3
epochs each) as ``dyt-lab study run`` does: ``--workers 2`` gives each worker cores / 2 threads,
``--workers 1`` leaves torch its default (all cores). The faster one is the study's documented
default (GitHub issue 12).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: `python benchmarks/study_threads.py`

from benchmarks.common import machine, write_section  # noqa: E402

STUDY = ROOT / "configs" / "study" / "bn_factors.yaml"
SLICE = ["--n_trials", "2", "--seeds", "[0,1]", "--base.overrides.trainer.max_epochs=3"]


def arm(workers: int, root: str) -> float:
    """Wall seconds of the study slice with ``workers`` workers (threads: cores / workers each)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the study chooses
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dyt_lab", "study", "run", "--config", str(STUDY), *SLICE,
                    "--workers", str(workers), "--root", root, "--study_name", f"threads_{workers}"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        two, one = arm(2, root), arm(1, root)
    cores = os.cpu_count()
    lines = ["## Study workers x threads (bn_factors slice: 2 configurations x 2 seeds, 3 epochs)", "",
             f"Machine: {machine()}", "", "| arm | wall (s) |", "|---|---|",
             f"| 2 workers x {max(1, cores // 2)} thread(s) | {two:.1f} |", f"| 1 worker x {cores} threads | {one:.1f} |", "",
             f"- 1 worker / 2 workers wall: {one / two:.2f} ({'2 workers' if two < one else '1 worker'} is faster)",
             "", "Command: `python benchmarks/study_threads.py`"]
    print("\n".join(lines))
    write_section("study_threads", "\n".join(lines))


if __name__ == "__main__":
    main()
