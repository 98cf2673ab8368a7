"""Run folders: find the checkpoint to resume, and record hyperparameters for TensorBoard."""

from __future__ import annotations

import re
from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

# HParams metrics: TensorBoard shows the latest value each run logged under these tags.
HPARAM_METRICS = ("val/acc_best", "val/acc", "val/loss", "train/loss")


def find_last_checkpoint(save_dir: str, name: str) -> tuple[Path, int] | None:
    """The newest ``<save_dir>/<name>/version_N/checkpoints/last.ckpt`` and its N, or None."""
    found = []
    for ckpt in Path(save_dir, name).glob("version_*/checkpoints/last.ckpt"):
        match = re.fullmatch(r"version_(\d+)", ckpt.parent.parent.name)
        if match:
            found.append((ckpt.stat().st_mtime, int(match.group(1)), ckpt))
    if not found:
        return None
    _, version, ckpt = max(found)
    return ckpt, version


def log_hparams_to_tensorboard(trainer: Trainer, hparams: dict[str, object]) -> None:
    """Write the run's real hyperparameters into the HParams tab, tied to ``HPARAM_METRICS``.

    Lightning's own path would also log a placeholder metric value (``hp_metric=-1``); writing the
    three HParams summaries directly declares the metrics without inventing a value for them.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams)  # hparams.yaml; no summary since default_hp_metric=False
            writer = logger.experiment._get_file_writer()
            for summary in hparams_summaries(hparams, dict.fromkeys(HPARAM_METRICS, 0.0)):
                writer.add_summary(summary)
            writer.flush()
