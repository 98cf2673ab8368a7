"""Runs' test predictions as correctness matrices: the input of the seeds x images comparisons.

Each run that tested its best checkpoint left ``test_predictions.npz`` in its folder
(``training/predictions.py``). Runs compared image by image must have been scored on one test split:
the same positions with the same labels, which is checked here, not assumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dyt_lab.errors import ConfigError
from dyt_lab.predictions import PREDICTIONS_FILE, read_predictions
from dyt_lab.study.report.resampling import compare_crossed
from dyt_lab.study.report.statistics import ALPHA


def correctness(run_dirs: list[str | Path]) -> np.ndarray:
    """(R, N) booleans, row r: which test images run ``run_dirs[r]`` classified right, by image position.

    A run without predictions, or scored on another split (other positions or labels), is a one-line error.
    """
    rows, first = [], None
    for run_dir in run_dirs:
        saved = read_predictions(run_dir)
        if saved is None:
            raise ConfigError(f"run '{run_dir}' has no {PREDICTIONS_FILE}: it did not test on the test split (runs "
                              "from before per-image predictions were saved cannot be compared image by image)")
        if first is None:
            first = (run_dir, saved)
        elif not (np.array_equal(saved["index"], first[1]["index"])
                  and np.array_equal(saved["label"], first[1]["label"])):
            raise ConfigError(f"runs '{first[0]}' and '{run_dir}' were tested on different test splits "
                              f"({len(first[1]['index'])} and {len(saved['index'])} images): they cannot pair by image")
        rows.append(saved["pred"] == saved["label"])
    return np.stack(rows)


def crossed_family(pairs: dict[str, tuple[dict[int, str], dict[int, str]]], margin: float,
                   alpha: float = ALPHA) -> tuple[pd.DataFrame, list[int]]:
    """Each labelled comparison (A's run folder by seed, B's by seed) on test accuracy, A - B, as one Holm family
    over seeds x images (``resampling.compare_crossed``), on the seeds every pair shares; and those seeds."""
    seeds = sorted(set.intersection(*(set(a) & set(b) for a, b in pairs.values())))
    if len(seeds) < 2:
        raise ConfigError(f"the comparisons share {len(seeds)} seed(s) with a run on both sides: an interval over "
                          "seeds x images needs 2 or more")
    d = np.stack([correctness([a[s] for s in seeds]).astype(np.int8) - correctness([b[s] for s in seeds])
                  for a, b in pairs.values()])  # (K, S, N)
    table = compare_crossed(d, margin, alpha=alpha)
    table.insert(0, "label", list(pairs))
    return table, seeds


def points(x: float) -> str:
    """An accuracy difference in points, signed: ``+0.40``."""
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:+.2f}"


def points_interval(low: float, high: float) -> str:
    """``[-0.31, +0.52]``: an accuracy difference's interval in points, within the +-100 it can reach."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "too few seeds"
    return f"[{points(max(low, -1.0))}, {points(min(high, 1.0))}]"


def detectable_points(mde: float) -> str:
    """What a comparison could detect with 80% power, in points; past 100 points (few seeds), no difference."""
    if not np.isfinite(mde):
        return "nothing (too few seeds)"
    return f"{100 * mde:.2f} points" if mde < 1 else "no possible difference (more than 100 points: too few seeds)"


def needed(n, unit: str, other: str) -> str:
    """A planning number as read: ``14 seeds``, or why no number of them would do."""
    if isinstance(n, float) and np.isinf(n):
        return f"no number of {unit} (the {other} part alone is too large)"
    return "-" if isinstance(n, float) and np.isnan(n) else f"{n} {unit}"


def planning_text(row: dict, margin: float, n_seeds: int, n_images: int) -> str:
    """An inconclusive seeds x images row's power: what it detects, and what would decide it at the margin."""
    return (f"detects {detectable_points(row['mde'])} with 80% power after Holm; ±{100 * margin:g} points "
            f"(a true 0, 80% power) would need {needed(row['seeds_needed'], 'seeds', 'test-image')} at "
            f"{n_images} images, or {needed(row['images_needed'], 'test images', 'seed')} at {n_seeds} seeds")
