"""Time the two-level bootstrap of a study-sized family on one thread: the target is under 10 s.

    python benchmarks/bootstrap_speed.py        # 3 rounds each of the bootstrap and the whole family, one core

The family is synthetic: 100 configurations x 10 seeds x 10,000 test images (Fashion-MNIST's test set),
int8 differences drawn with about 5% of images disagreeing, 2000 replicates, as
``dyt_lab.study.report.resampling.compare_crossed`` runs it. The figure is the best of 3 rounds
(a shared machine only ever adds time). It prints; it does not write RESULTS.md.
"""

from __future__ import annotations

import os

for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[name] = "1"  # before numpy loads BLAS: the target is for one core

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.common import machine  # noqa: E402
from dyt_lab.study.report.resampling import bootstrap_means, compare_crossed  # noqa: E402

SHAPE = (100, 10, 10_000)  # (configurations, seeds, images)
N_BOOT, TARGET = 2000, 10.0


def main() -> None:
    rng = np.random.default_rng(0)
    d = (rng.random(SHAPE) < 0.05).astype(np.int8) - (rng.random(SHAPE) < 0.04).astype(np.int8)
    print(f"Machine: {machine()}")
    # the bootstrap alone, then the whole family as a report computes it (moments, bootstrap, tests, Holm, power)
    for label, run in (("bootstrap_means", lambda: bootstrap_means(d, N_BOOT, seed=0)),
                       ("compare_crossed", lambda: compare_crossed(d, 0.005, n_boot=N_BOOT))):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        best, rounds = min(times), ", ".join(f"{t:.2f}" for t in times)
        print(f"{label} {SHAPE} int8, n_boot={N_BOOT}, 1 thread: {best:.2f} s (min of 3: {rounds}); "
              f"target < {TARGET:.0f} s: {'met' if best < TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
