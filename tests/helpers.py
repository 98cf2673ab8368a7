"""Shared helpers for tests that run dyt-lab in-process or as a real subprocess."""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> str | None:
    """Mount a real tmpfs of ``size`` at ``folder`` (root only); None, or why it cannot be mounted."""
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    return None if done.returncode == 0 else \
        f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip() or done.returncode})"


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def last_line(text: str) -> str:
    """The last non-empty line of a process's output."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
