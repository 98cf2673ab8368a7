"""Run folders: find the checkpoint to resume, and record hyperparameters for TensorBoard."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
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


class RunRecord(Callback):
    """Write the site -> norm table and the HParams summary into the run folder once data is ready.

    It acts in ``setup``, after ``prepare_data``, so a run that fails on missing data leaves no
    record that looks like a started run.
    """

    def __init__(self, hparams: dict[str, object], placement_table: str | None) -> None:
        self.hparams = hparams
        self.placement_table = placement_table

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero or log_dir is None or trainer.fast_dev_run:
            return  # no run folder to record into (fast_dev_run logs nothing)
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        if self.placement_table:
            (log_dir / "placement.txt").write_text(self.placement_table + "\n")
        log_hparams_to_tensorboard(trainer, self.hparams)
        print(f"run folder: {log_dir}\nTensorBoard: tensorboard --logdir {log_dir.parent}", file=sys.stderr)
