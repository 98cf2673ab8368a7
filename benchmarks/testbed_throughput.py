"""Training images per second on one core on the findings testbed: today's path against the old one.

    python benchmarks/testbed_throughput.py            # 3 rounds x 3 epochs per arm (~8 min on a quiet machine)
    python benchmarks/testbed_throughput.py --quick    # 1 round

The testbed is the real `dyt-lab fit --config configs/experiments/bn_factors_mnist5k.yaml`
(ResNet-tiny, MNIST5k, 63 batches of 64 a training epoch, validation, checkpoints and logging
included) at BatchNorm's and DyT's points of the `factored` norm, with one thread. Each point runs
in two arms, alternating in one process:

- baseline: the path the findings' first studies ran, kept behind two switches: the factored norm's
  written-out formula (`fused: false`) and feature maps stored NCHW (`memory_format: contiguous`).
- today: the defaults, the library kernel of the layer the point equals (`F.batch_norm`, the fused
  DyT kernel) on feature maps stored channels-last.

An epoch's images per second is its 4000 training images over its wall time, training plus
validation; the first epoch of each run is dropped (it pays one-time costs). The ratio compares
medians. Target (GitHub issue 20): today / baseline >= 1.5 for both points.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from benchmarks.common import machine, median, write_section  # noqa: E402
from benchmarks.overhead import TESTBED, lightning_epochs  # noqa: E402

TARGET = 1.5
TRAIN_IMAGES = 4000  # MNIST5k's train split at the default fractions (val 0.1, test 0.1)
POINTS = {  # the factored norm at BatchNorm's and at DyT's point, as the testbed's configs write them
    "BatchNorm": "center: batch, scale: batch_std, squash: none",
    "DyT (alpha0 0.5)": "center: none, scale: alpha, squash: tanh",
}
ARMS = {
    "baseline": ("false", "contiguous"),
    "today": ("true", "channels_last"),
}


def arm_flags(point: str, arm: str) -> tuple[str, ...]:
    fused, memory_format = ARMS[arm]
    return (f"--model.norm={{name: factored, {point}, fused: {fused}}}", f"--model.memory_format={memory_format}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")


def main(argv: list[str] | None = None) -> None:
    """Time both arms of both points, print the table, and record it in benchmarks/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round instead of 3")
    args = parser.parse_args(argv)
    rounds, epochs = (1, 3) if args.quick else (3, 3)
    torch.set_num_threads(1)  # per core: the studies run 2 workers of 1 thread each on 2 cores
    epoch_seconds: dict[tuple[str, str], list[float]] = {(p, a): [] for p in POINTS for a in ARMS}
    with tempfile.TemporaryDirectory() as save_dir:
        for _ in range(rounds):
            for point_name, point in POINTS.items():
                for arm in ARMS:
                    epoch_seconds[point_name, arm] += lightning_epochs(TESTBED, epochs, save_dir,
                                                                       arm_flags(point, arm))
    rows, ratios = [], []
    for point_name in POINTS:
        rate = {arm: TRAIN_IMAGES / median(epoch_seconds[point_name, arm]) for arm in ARMS}
        ratio = rate["today"] / rate["baseline"]
        ratios.append(ratio)
        rows.append(f"| {point_name} | {rate['baseline']:.0f} | {rate['today']:.0f} | **{ratio:.2f}** "
                    f"({'met' if ratio >= TARGET else 'NOT met'}) |")
    text = "\n".join([
        "## testbed_throughput.py: training images per second on one core, the MNIST5k testbed",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/testbed_throughput.py{' --quick' if args.quick else ''}` "
        f"({rounds} rounds of {epochs}-epoch fits per arm, alternating; first epoch of each run dropped; "
        "an epoch is training and validation).",
        "",
        f"| point of `factored` | baseline: written-out formula, NCHW (img/s) | today: library kernels, channels-last "
        f"(img/s) | today / baseline (target >= {TARGET}) |",
        "|---|---|---|---|",
        *rows,
    ])
    print(text)
    write_section("testbed_throughput", text)


if __name__ == "__main__":
    main()
