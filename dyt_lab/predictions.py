"""Per-image test predictions: what a run got right on which test image, kept in its run folder.

The file format's one home, below both its writer (``training/module.py``) and its reader (the study
report), which may not import each other.

Every test pass (``fit --test_after_fit``, ``dyt-lab test``, each study trial) writes
``test_predictions.npz`` beside its TensorBoard events: for each test image, its position in the test
split, the predicted class and the label (int32/int16, about 40 KB for 10,000 images, compressed).
Two runs scored on the same split then pair image by image: the study report's intervals include the
test set's own sampling (``study/report/resampling.py``) and McNemar's test compares them exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PREDICTIONS_FILE = "test_predictions.npz"
# A study folder's copy of its runs' predictions, one <run folder name>.npz each: what docs/results ships of a
# holdout, whose run folders (checkpoints, events) are too large to commit.
ARCHIVE = "predictions"


def write_predictions(folder: str | Path, index: np.ndarray, pred: np.ndarray, label: np.ndarray) -> Path:
    """Write one run's predictions, each image once, sorted by position (DDP's padding repeats some)."""
    index, first = np.unique(np.asarray(index), return_index=True)
    path = Path(folder) / PREDICTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")  # np.savez adds .npz to a name without it
    np.savez_compressed(tmp, index=index.astype(np.int32), pred=np.asarray(pred)[first].astype(np.int16),
                        label=np.asarray(label)[first].astype(np.int16))
    tmp.replace(path)  # never a half-written file where a reader looks
    return path


def read_predictions(folder: str | Path) -> dict[str, np.ndarray] | None:
    """``{"index", "pred", "label"}`` of the run in ``folder`` (each (N,)), or None if it wrote none.

    ``folder`` may also name a predictions file itself (an archived run's ``.npz``).
    """
    path = Path(folder) if Path(folder).suffix == ".npz" else Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {key: data[key] for key in ("index", "pred", "label")}


def archive_predictions(run_dirs: list[str | Path], study_folder: str | Path) -> Path:
    """Copy each run's predictions into the study folder's archive (what can be committed of a study); its path."""
    import shutil

    archive = Path(study_folder) / ARCHIVE
    archive.mkdir(parents=True, exist_ok=True)
    for run_dir in run_dirs:
        if (Path(run_dir) / PREDICTIONS_FILE).is_file():
            shutil.copyfile(Path(run_dir) / PREDICTIONS_FILE, archive / f"{Path(run_dir).name}.npz")
    return archive


def predictions_of(run_dir: str | Path, study_folder: str | Path) -> Path:
    """Where run ``run_dir``'s predictions are: its own folder, or, where they are not there (a shipped study),
    the study folder's archive; ``run_dir`` if neither has them."""
    archived = Path(study_folder) / ARCHIVE / f"{Path(run_dir).name}.npz"
    if not (Path(run_dir) / PREDICTIONS_FILE).is_file() and archived.is_file():
        return archived
    return Path(run_dir)
