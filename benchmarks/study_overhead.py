"""What a study costs on top of its fits: ``dyt-lab study run`` against a hand-written Optuna loop.

    python benchmarks/study_overhead.py            # 8 one-epoch digits trials per arm (~4 min on 2 cores)
    python benchmarks/study_overhead.py --trials 2 # a quick look (about a minute); too few trials to quote

Three arms run the same trials (a grid over 8 norms of ResNet-tiny on digits, one epoch each):
- ``warm``: ``dyt-lab study run`` with trials forked from a warm process (the default);
- ``process``: the same with ``--isolation process`` (a fresh Python per trial, as before);
- ``hand loop``: the simplest in-process loop a user would write, ``study.optimize`` over an
  objective that runs the same LightningCLI fit in the same process (no isolation, no retries); like a
  study's trial, each fit tests its best checkpoint afterwards (``--test_after_fit``), so the two arms
  do the same work and their ratio is what the study adds.
Every arm runs as its own process, imports included. Per-trial overhead is a trial's wall time, as
the worker measures it, minus the time inside ``Trainer.fit`` that the trial's callback measures.
A fourth run times what a user iterating on a study file waits for: a 4-trial grid of near-empty
trials (the quickstart, one train batch and one val batch), wall time per trial, the study's own
start included.
Targets: median overhead <= 1.5 s (GitHub issue 12); study wall / hand loop <= 1.3 (issue 32; 1.5 in
issue 20) and the near-empty study <= 4 s a trial (GitHub issue 20).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: `python benchmarks/study_overhead.py`

from benchmarks.common import machine, verdict, write_section  # noqa: E402

BASE = ROOT / "configs" / "experiments" / "resnet_bn_vs_dyt_digits.yaml"
OVERRIDES = {"trainer.max_epochs": 1, "trainer.enable_model_summary": False}
NORMS = ["batchnorm", "dyt", "derf", "dyt_shift", "dyt_channel_alpha", "dyt_centered", "identity", "rmsnorm"]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
NEAR_EMPTY = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 1}
OVERHEAD_TARGET, WALL_TARGET, NEAR_EMPTY_TARGET = 1.5, 1.3, 4.0


def study_arm(folder: Path, isolation: str, trials: int, env: dict) -> tuple[float, list[float]]:
    """Wall seconds of ``dyt-lab study run`` and each trial's overhead (its wall time minus its fit)."""
    import optuna

    from dyt_lab.study.attributes import FIT_TIME

    spec = {"study_name": f"overhead_{isolation}", "root": str(folder), "isolation": isolation,
            "base": {"configs": [str(BASE)], "overrides": OVERRIDES}, "search_space": {"model.norm": NORMS[:trials]},
            "sampler": {"name": "grid", "seed": 0}, "pruner": {"name": "none"}, "n_trials": trials}
    path = folder / f"{isolation}.yaml"
    path.write_text(yaml.safe_dump(spec))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dyt_lab", "study", "run", "--config", str(path)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=spec["study_name"], storage=f"sqlite:///{folder / spec['study_name'] / 'study.db'}")
    overheads = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs[FIT_TIME] for t in study.trials]
    return wall, overheads


def near_empty_arm(folder: Path, env: dict) -> float:
    """Wall seconds per trial of ``dyt-lab study run`` over 4 near-empty trials, its start included."""
    spec = {"study_name": "near_empty", "root": str(folder), "base": {"configs": [str(QUICKSTART)], "overrides": NEAR_EMPTY},
            "search_space": {"model.alpha_init": [0.25, 0.5, 1.0, 2.0]}, "sampler": {"name": "grid", "seed": 0},
            "pruner": {"name": "none"}, "n_trials": 4}
    path = folder / "near_empty.yaml"
    path.write_text(yaml.safe_dump(spec))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dyt_lab", "study", "run", "--config", str(path)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    return (time.perf_counter() - start) / 4


def hand_loop(trials: int) -> None:
    """The loop a user writes by hand: one LightningCLI fit per trial, in this process."""
    import optuna

    from dyt_lab.runs import run_lightning

    folder = tempfile.mkdtemp(prefix="hand-loop-")

    def objective(trial: optuna.Trial) -> float:
        norm = trial.suggest_categorical("model.norm", NORMS[:trials])
        flags = [f"--{k}={v}" for k, v in OVERRIDES.items()]
        cli = run_lightning(["fit", "--config", str(BASE), f"--model.norm={norm}", *flags, "--test_after_fit=true",
                             "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={folder}"])
        return float(cli.trainer.callback_metrics["test/acc"])  # the best checkpoint's, as a trial reports it

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler = optuna.samplers.GridSampler({"model.norm": NORMS[:trials]}, seed=0)
    optuna.create_study(direction="maximize", sampler=sampler).optimize(objective, n_trials=trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, choices=range(1, len(NORMS) + 1), metavar="N",
                        help="trials per arm, 1 to 8 (2 for a quick look)")
    parser.add_argument("--hand-loop", action="store_true", help=argparse.SUPPRESS)  # the third arm's process
    args = parser.parse_args()
    if args.hand_loop:
        return hand_loop(args.trials)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as tmp:
        warm_wall, warm = study_arm(Path(tmp), "warm", args.trials, env)
        process_wall, process = study_arm(Path(tmp), "process", args.trials, env)
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--hand-loop", "--trials", str(args.trials)], cwd=tmp, env=env,
                       check=True, capture_output=True)
        hand_wall = time.perf_counter() - start
        near_empty = near_empty_arm(Path(tmp), env)
    median_warm, median_process = statistics.median(warm), statistics.median(process)
    ratio = warm_wall / hand_wall
    lines = [f"## Study overhead ({args.trials} one-epoch digits trials per arm)", "", f"Machine: {machine()}", "",
             "| arm | wall (s) | median per-trial overhead (s) |", "|---|---|---|",
             f"| study, isolation warm | {warm_wall:.1f} | {median_warm:.2f} |",
             f"| study, isolation process | {process_wall:.1f} | {median_process:.2f} |",
             f"| hand-written Optuna loop, in one process | {hand_wall:.1f} | - |", "",
             f"- median per-trial overhead, warm: {median_warm:.2f} s (target <= {OVERHEAD_TARGET}: "
             f"{verdict(median_warm, OVERHEAD_TARGET)}); fresh processes: {median_process:.2f} s",
             f"- study wall / hand loop: {ratio:.3f} (target <= {WALL_TARGET}: {verdict(ratio, WALL_TARGET)}); "
             f"with fresh processes {process_wall / hand_wall:.3f}",
             f"- near-empty study (quickstart, 4 trials of 1 train + 1 val batch): {near_empty:.2f} s a trial, its start "
             f"included (target <= {NEAR_EMPTY_TARGET}: {verdict(near_empty, NEAR_EMPTY_TARGET)})",
             "", "Command: `python benchmarks/study_overhead.py`"]
    print("\n".join(lines))
    write_section("study_overhead", "\n".join(lines))


if __name__ == "__main__":
    main()
