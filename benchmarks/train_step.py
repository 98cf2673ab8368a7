"""Whole training-step time: ViT with DyT vs LayerNorm, and ResNet with DyT vs BatchNorm.

    python benchmarks/train_step.py            # 7 rounds (~2 min on 2 cores)
    python benchmarks/train_step.py --quick    # 3 rounds

One step is forward, cross-entropy, backward and an AdamW update on a fixed batch. The two
models of a pair have the same architecture and initial weights apart from their norms, and are
stepped in turn every round in one process; the ratio compares median step times.
Target (GitHub issue 7): ViT-DyT / ViT-LN <= 1.0. ResNet-DyT / ResNet-BN is reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from benchmarks.common import alternate, machine, median, verdict, write_section  # noqa: E402
from dyt_lab.models import ResNet, ViT  # noqa: E402

BATCH = 64
# pair name -> (builder taking a norm name, input shape, norm under test, baseline norm, target)
PAIRS = {
    "ViT (vit_cifar: dim 192, depth 6, 65 tokens)": (
        lambda norm: ViT("vit_cifar", num_classes=10, norm=norm), (BATCH, 3, 32, 32), "dyt", "layernorm", 1.0),
    "ResNet-20 (CIFAR, 32x32)": (
        lambda norm: ResNet("resnet20", num_classes=10, norm=norm), (BATCH, 3, 32, 32), "dyt", "batchnorm", None),
}


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int):
    """A closure running ``steps`` full training steps of ``model`` on one batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    return run


def main(argv: list[str] | None = None) -> None:
    """Time every pair, print the table, and record it in benchmarks/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    args = parser.parse_args(argv)
    rounds, steps = (3, 2) if args.quick else (7, 3)
    rows = ["| model | norm | median step (ms) | ratio to baseline | target |", "|---|---|---|---|---|"]
    for name, (build, shape, norm, baseline, target) in PAIRS.items():
        x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
        torch.manual_seed(0)
        tested = build(norm)
        torch.manual_seed(0)
        base = build(baseline)
        runs = {norm: step_fn(tested, x, y, steps), baseline: step_fn(base, x, y, steps)}
        for run in runs.values():
            run()  # warm-up: allocator, fused-kernel build, first-call dispatch
        times = alternate(runs, rounds)
        ms = {k: median(v) / steps * 1e3 for k, v in times.items()}
        ratio = ms[norm] / ms[baseline]
        goal = f"<= {target}: {verdict(ratio, target)}" if target else "reported"
        rows.append(f"| {name} | {baseline} | {ms[baseline]:.1f} | 1.000 | |")
        rows.append(f"| {name} | {norm} | {ms[norm]:.1f} | **{ratio:.3f}** | {goal} |")
    text = "\n".join([
        "## train_step.py: whole training step, DyT vs the norm it replaces",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/train_step.py{' --quick' if args.quick else ''}` "
        f"(batch {BATCH}, {rounds} rounds x {steps} steps, alternating).",
        "",
        *rows,
    ])
    print(text)
    write_section("train_step", text)


if __name__ == "__main__":
    main()
