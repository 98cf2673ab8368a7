"""``dyt-lab fit`` on the quickstart against a raw PyTorch loop: same model, data, optimizer, seed.

    python benchmarks/overhead.py            # 3 rounds of 6 epochs each way (~3 min on 2 cores)
    python benchmarks/overhead.py --quick    # 2 rounds of 4 epochs

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
TARGET = 1.05


# The bare arm shows what Lightning's loop itself costs, without what the run records.
BARE = ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false"]


def lightning_epochs(epochs: int, save_dir: str, extra: tuple[str, ...] = ()) -> list[float]:
    """Epoch times of the real ``dyt-lab fit --config configs/quickstart.yaml`` (plus ``extra`` flags)."""
    cli = run_lightning(["fit", "--config", str(QUICKSTART), f"--trainer.max_epochs={epochs}",
                         f"--trainer.logger.init_args.save_dir={save_dir}",
                         f"--trainer.default_root_dir={save_dir}", *extra,  # where a logger-less run writes
                         "--trainer.callbacks+=benchmarks.common.EpochTimer"])
    timer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, EpochTimer))
    return timer.epoch_seconds()[1:]


def raw_epochs(epochs: int) -> list[float]:
    """Epoch times of a plain loop over the same model, data loaders, optimizer and schedule."""
    model, data, _ = load_run(["--config", str(QUICKSTART)])  # the quickstart's own model and data objects
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


def main(argv: list[str] | None = None) -> None:
    """Run the comparison, print it, and record it in benchmarks/RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 epochs")
    args = parser.parse_args(argv)
    rounds, epochs = (2, 4) if args.quick else (3, 6)
    lightning, bare, raw = [], [], []
    with tempfile.TemporaryDirectory() as save_dir:
        for _ in range(rounds):
            lightning += lightning_epochs(epochs, save_dir)
            bare += lightning_epochs(epochs, save_dir, tuple(BARE))
            raw += raw_epochs(epochs)
    ratio = median(lightning) / median(raw)
    text = "\n".join([
        "## overhead.py: `dyt-lab fit` epoch vs raw PyTorch loop (quickstart)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/overhead.py`"
        f"{' --quick' if args.quick else ''} ({rounds} rounds x {epochs} epochs each way, alternating).",
        "",
        "| loop | median epoch (s) |",
        "|---|---|",
        f"| dyt-lab fit (Lightning), as shipped | {median(lightning):.3f} |",
        f"| dyt-lab fit without logger, checkpoints, progress bar | {median(bare):.3f} |",
        f"| raw PyTorch loop | {median(raw):.3f} |",
        "",
        f"Ratio fit / raw: **{ratio:.3f}** (target <= {TARGET}: {verdict(ratio, TARGET)}); "
        f"without logger, checkpoints and progress bar: {median(bare) / median(raw):.3f}.",
    ])
    print(text)
    write_section("overhead", text)


if __name__ == "__main__":
    main()
