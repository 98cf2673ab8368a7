"""Runs' test predictions as correctness matrices: the input of the seeds x images comparisons.

Each run that tested its best checkpoint left ``test_predictions.npz`` in its folder
(``training/predictions.py``). Runs compared image by image must have been scored on one test split:
the same positions with the same labels, which is checked here, not assumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dyt_lab.errors import ConfigError
from dyt_lab.training.predictions import PREDICTIONS_FILE, read_predictions


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
