"""Run folders: find the checkpoint to resume, and record hyperparameters for TensorBoard."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from dyt_lab.errors import ConfigError

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


def read_matching_checkpoint(model: torch.nn.Module, path: str | Path) -> dict:
    """Read a Lightning checkpoint whose weights fit ``model``, or raise one ConfigError line saying why not."""
    if not Path(path).is_file():
        raise ConfigError(f"checkpoint '{path}' is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file (pickle, zip or torch errors): say so in one line
        raise ConfigError(f"cannot read checkpoint '{path}': {str(err).splitlines()[0]}") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if state is None:
        raise ConfigError(f"'{path}' is not a Lightning checkpoint (it has no state_dict)")
    own = model.state_dict()
    problems = [f"missing key '{k}'" for k in own if k not in state]
    problems += [f"unexpected key '{k}'" for k in state if k not in own]
    problems += [f"'{k}' has shape {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"checkpoint '{path}' does not match the config's model: {problems[0]}{more}; "
                          "pass the run's own --config")
    return ckpt


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
