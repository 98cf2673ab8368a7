"""Time the quickstart fit with ``NormDiagnostics`` at its default intervals against the same fit without it.

    python benchmarks/diagnostics_overhead.py               # 5 pairs of quickstart fits (~4 min on 2 idle cores)
    python benchmarks/diagnostics_overhead.py --repeats 1 --epochs 5 --no-write    # a quick look

Both arms run in this one process, alternating (on/off, then off/on, ...), because the machine is
shared and only times taken side by side compare. Each time is that of the training loop, from
``on_train_start`` to ``on_train_end`` (data, model and Lightning set-up are the same in both arms).
A first fit with diagnostics on is not counted: it imports matplotlib and warms up the kernels.
The target, from GitHub issue 6: on / off <= 1.10.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from lightning.pytorch import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from benchmarks.common import RESULTS, machine, write_section  # noqa: E402
from dyt_lab.diagnostics import NormDiagnostics  # noqa: E402
from dyt_lab.runs import run_lightning  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TARGET = 1.10
ON = ["--trainer.callbacks+=benchmarks.diagnostics_overhead.TimedNormDiagnostics"]


class TrainTimer(Callback):
    """Wall time of the training loop, validation and every callback included."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


class TimedNormDiagnostics(NormDiagnostics):
    """``NormDiagnostics`` at its defaults, adding up the time spent in its hooks (a second, in-run measure)."""

    seconds = 0.0

    def _timed(self, hook: str, *args) -> None:
        start = time.perf_counter()
        getattr(super(), hook)(*args)
        self.seconds += time.perf_counter() - start

    def on_train_start(self, *args) -> None:
        self._timed("on_train_start", *args)

    def on_train_batch_end(self, *args) -> None:
        self._timed("on_train_batch_end", *args)

    def on_train_epoch_end(self, *args) -> None:
        self._timed("on_train_epoch_end", *args)


def _callback(cli, name: str):
    return next((c for c in cli.trainer.callbacks if type(c).__name__ == name), None)


def fit_seconds(save_dir: str, epochs: int, diagnostics: bool) -> tuple[float, float]:
    """Run one quickstart fit; return its training-loop time and the time spent inside the diagnostics."""
    args = ["fit", "--config", str(QUICKSTART), f"--trainer.logger.init_args.save_dir={save_dir}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.max_epochs={epochs}", *(ON if diagnostics else []),
            "--trainer.callbacks+=benchmarks.diagnostics_overhead.TrainTimer"]
    cli = run_lightning(args)
    inside = _callback(cli, "TimedNormDiagnostics")
    return _callback(cli, "TrainTimer").seconds, inside.seconds if inside else 0.0


def main() -> None:
    """Run the alternating fits, print the times and the ratio, and record them in RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="pairs of fits (on and off)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per fit")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args()
    os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # this script's own flags
    with tempfile.TemporaryDirectory() as save_dir:
        fit_seconds(save_dir, 1, diagnostics=True)  # warm-up, not counted
        times: dict[bool, list[float]] = {True: [], False: []}
        inside: list[float] = []  # in-run share: diagnostics time / the rest of the same run
        for i in range(args.repeats):
            for diagnostics in ((True, False) if i % 2 == 0 else (False, True)):
                loop, spent = fit_seconds(save_dir, args.epochs, diagnostics)
                times[diagnostics].append(loop)
                if diagnostics:
                    inside.append(spent / (loop - spent))
                print(f"pair {i + 1}: diagnostics {'on ' if diagnostics else 'off'} {loop:.1f} s"
                      + (f" ({spent:.2f} s inside the callback)" if diagnostics else ""), flush=True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    pair_ratios = [a / b for a, b in zip(times[True], times[False])]
    ratio = statistics.median(pair_ratios)  # each pair ran back to back: the load drifts less within a pair
    share = statistics.median(inside)
    verdict = "meets" if ratio <= TARGET else "misses"
    text = "\n".join([
        f"Quickstart (DyT ViT on digits, {args.epochs} epochs), `NormDiagnostics` at its defaults "
        "(alpha every 50 steps, statistics every epoch on 32 probe images, figures every 20 epochs) against none;",
        f"{args.repeats} alternating pairs in one process, training-loop time. Machine: {machine()}.",
        "",
        "| arm | median s | all runs s |",
        "|---|---|---|",
        f"| diagnostics off | {off:.1f} | {', '.join(f'{t:.1f}' for t in times[False])} |",
        f"| diagnostics on | {on:.1f} | {', '.join(f'{t:.1f}' for t in times[True])} |",
        "",
        f"on / off = **{ratio:.3f}** (median over pairs: {', '.join(f'{r:.3f}' for r in pair_ratios)}; "
        f"ratio of the medians {on / off:.3f}); {verdict} the target of {TARGET:.2f}.",
        f"Time inside the callback, over the rest of the same run (immune to load changes between runs): "
        f"**{share:.1%}** (median; per run: {', '.join(f'{r:.1%}' for r in inside)}).",
        "Command: `python benchmarks/diagnostics_overhead.py`.",
    ])
    print("\n" + text)
    if not args.no_write:
        write_section("diagnostics_overhead", "## diagnostics_overhead\n\n" + text)
        print(f"\nwrote the diagnostics_overhead section of {RESULTS}")


if __name__ == "__main__":
    main()
