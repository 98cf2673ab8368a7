"""``dyt-lab fit`` on the quickstart against a raw PyTorch loop: same model, data, optimizer, seed.

    python benchmarks/overhead.py            # quickstart, 3 rounds x 6 epochs; resnet_tiny/MNIST5k, 2 x 3 (~8 min)
    python benchmarks/overhead.py --quick    # quickstart only, 2 rounds of 4 epochs

The Lightning side is the real command (``configs/quickstart.yaml``: progress bar, logging,
checkpoints, validation); the raw side does what it must to be comparable: train, step the
schedule, and measure validation accuracy each epoch. Rounds alternate between the two in one
process; the ratio compares median steady-state epoch times (the first epoch of each run is
dropped: it pays one-time costs on both sides). Target (GitHub issue 7): <= 1.05.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: `python benchmarks/overhead.py`

from benchmarks.common import EpochTimer, machine, median, verdict, write_section  # noqa: E402
from dyt_lab.runs import load_run, run_lightning  # noqa: E402
from dyt_lab.training import WarmupCosineLR, parameter_groups  # noqa: E402

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TESTBED = ROOT / "configs" / "experiments" / "bn_factors_mnist5k.yaml"
TARGET = 1.05


# The bare arm shows what Lightning's loop itself costs, without what the run records.
BARE = ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false"]


def lightning_epochs(config: Path, epochs: int, save_dir: str, extra: tuple[str, ...] = ()) -> list[float]:
    """Epoch times of the real ``dyt-lab fit --config CONFIG`` (plus ``extra`` flags)."""
    cli = run_lightning(["fit", "--config", str(config), f"--trainer.max_epochs={epochs}",
                         f"--trainer.logger.init_args.save_dir={save_dir}",
                         f"--trainer.default_root_dir={save_dir}", *extra,  # where a logger-less run writes
                         "--trainer.callbacks+=benchmarks.common.EpochTimer"])
    timer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, EpochTimer))
    return timer.epoch_seconds()[1:]


def raw_epochs(config: Path, epochs: int) -> list[float]:
    """Epoch times of a plain loop over the same model, data loaders, optimizer and schedule."""
    model, data, _ = load_run(["--config", str(config)])  # the run's own model and data objects
    net = model.net
    data.setup("fit")
    train, val = data.train_dataloader(), data.val_dataloader()
    optimizer = torch.optim.AdamW(parameter_groups(net), lr=0.002, weight_decay=0.05)
    schedule = WarmupCosineLR(optimizer, warmup_fraction=0.1, total_steps=epochs * len(train))
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        train.sampler.set_epoch(epoch)
        net.train()
        for x, y in train:
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in val)
        assert 0 <= correct <= len(val.dataset)
        times.append(time.perf_counter() - start)
    return times[1:]


def compare(name: str, config: Path, rounds: int, epochs: int) -> tuple[str, float]:
    """One workload's three loops, alternating; its Markdown rows and the fit / raw ratio."""
    lightning, bare, raw = [], [], []
    with tempfile.TemporaryDirectory() as save_dir:
        for _ in range(rounds):
            lightning += lightning_epochs(config, epochs, save_dir)
            bare += lightning_epochs(config, epochs, save_dir, tuple(BARE))
            raw += raw_epochs(config, epochs)
    ratio = median(lightning) / median(raw)
    rows = [f"| {name} | {median(lightning):.3f} | {median(bare):.3f} | {median(raw):.3f} | "
            f"**{ratio:.3f}** ({verdict(ratio, TARGET)}) | {median(bare) / median(raw):.3f} |"]
    return "\n".join(rows), ratio


def main(argv: list[str] | None = None) -> None:
    """Run the comparison, print it, and record it in benchmarks/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 epochs, quickstart only")
    args = parser.parse_args(argv)
    rounds, epochs = (2, 4) if args.quick else (3, 6)
    workloads = [("quickstart (ViT, digits; 0.6 s epochs)", QUICKSTART, rounds, epochs)]
    if not args.quick:
        workloads.append(("resnet_tiny, MNIST5k (the findings testbed; ~10 s epochs)", TESTBED, 2, 3))
    rows = [compare(*w)[0] for w in workloads]
    text = "\n".join([
        "## overhead.py: `dyt-lab fit` epoch vs raw PyTorch loop",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/overhead.py`"
        f"{' --quick' if args.quick else ''} (rounds of each loop alternating; first epoch of each run dropped).",
        "",
        f"| workload | fit, as shipped (s) | fit without logger, checkpoints, bar (s) | raw loop (s) | fit / raw (target <= {TARGET}) | bare / raw |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(text)
    write_section("overhead", text)


if __name__ == "__main__":
    main()
