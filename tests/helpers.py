"""Shared helpers for tests that run dyt-lab in-process or as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# Fast, quiet runs: tests read metrics from the trainer and the event files, not from the terminal.
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def fit_args(save_dir: Path, *extra: str, config: Path = QUICKSTART) -> list[str]:
    """LightningCLI args for a quiet fit of ``config`` logging under ``save_dir``."""
    return ["fit", "--config", str(config), f"--trainer.logger.init_args.save_dir={save_dir}", *QUIET, *extra]


def run_cli(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``python -m dyt_lab ARGS`` as a new process, the way a user's shell would."""
    # One thread: xdist runs two workers on two cores, and a child with torch's default of every core
    # beside another busy process falls off the 7x oversubscription cliff (README, Performance).
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLCONFIGDIR": str(cwd / ".mpl"), "OMP_NUM_THREADS": "1"}
    env.pop("DYT_LAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dyt_lab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def last_line(text: str) -> str:
    """The last non-empty line of a process's output."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
