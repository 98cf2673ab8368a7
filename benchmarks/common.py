"""What the benchmark scripts share: timing side by side, the machine's description, RESULTS.md."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import Callback

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """CPU model, threads and library versions: the context every ratio is measured in."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}), {device}, Python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f}")


def alternate(candidates: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each candidate, calling them in turn every round (shared machines drift)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    """The median: robust to the odd slow round on a shared machine."""
    return statistics.median(values)


def verdict(ratio: float, limit: float) -> str:
    """``met`` or ``NOT met`` for a ratio against its upper limit."""
    return "met" if ratio <= limit else "NOT met"


def write_section(name: str, text: str) -> None:
    """Replace this script's section of RESULTS.md (between its markers), keeping the others."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in current and end in current:
        head, rest = current.split(start, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(current)


class EpochTimer(Callback):
    """Records the wall clock at the start of every training epoch (for steady-state epoch times)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    def on_fit_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    def epoch_seconds(self) -> list[float]:
        """Seconds of each epoch, training plus validation, from one start to the next."""
        return [b - a for a, b in zip(self.starts, self.starts[1:])]
