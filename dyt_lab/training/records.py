"""Run records: the site -> norm table and the real hyperparameters in TensorBoard's HParams tab."""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

# HParams metrics: TensorBoard shows the latest value each run logged under these tags.
HPARAM_METRICS = ("val/acc_best", "val/acc", "val/loss", "train/loss")
# What the HParams tab shows: the model and data arguments and the trainer settings that change results.
HPARAM_KEYS = ("model", "data", "seed_everything", "trainer.max_epochs", "trainer.max_steps", "trainer.precision",
               "trainer.devices", "trainer.num_nodes", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val")
# The tab's first columns, in this order: what a norm study varies, then the rest in config order.
HPARAM_FIRST = ("model.norm", "model.placement", "model.alpha_init", "model.optimizer.lr", "seed_everything")


def flat_hparams(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested config -> ``{"model.norm": "dyt", ...}`` of TensorBoard-friendly scalar values.

    jsonargparse's and Lightning's bookkeeping is folded away: ``init_args`` and ``dict_kwargs``
    levels vanish, a ``class_path`` becomes the value of its own key (``model.optimizer:
    torch.optim.AdamW``), and ``_instantiator`` (how Lightning rebuilds a module) is left out.
    """
    flat: dict[str, object] = {}
    for key, value in config.items():
        if key in ("init_args", "dict_kwargs"):
            flat.update(flat_hparams(value, prefix))
        elif key in ("class_path", "_class_path"):
            flat[prefix.removesuffix(".") or key] = value
        elif key != "_instantiator":
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                flat.update(flat_hparams(value, f"{name}."))
            elif isinstance(value, (bool, int, float, str)):
                flat[name] = value
            else:  # lists, None: shown as text so the HParams tab can still filter on them
                flat[name] = str(value)
    return flat


def run_hparams(config: dict) -> dict[str, object]:
    """The hyperparameters of a run's resolved config that the HParams tab shows, ``HPARAM_FIRST`` first."""
    shown = {k: v for k, v in flat_hparams(config).items()
             if any(k == key or k.startswith(f"{key}.") for key in HPARAM_KEYS)}
    return {**{k: shown[k] for k in HPARAM_FIRST if k in shown}, **shown}


def log_hparams_to_tensorboard(trainer: Trainer, hparams: dict[str, object]) -> None:
    """Write the run's real hyperparameters into the HParams tab, tied to ``HPARAM_METRICS``.

    Lightning's own path would also log a placeholder metric value (``hp_metric=-1``), and
    ``SummaryWriter.add_hparams`` writes into a new sub-run with the metrics as constants; writing
    the three HParams summaries into the run's own event file declares the metrics without
    inventing a value for them. TensorBoard shows the columns in ``hparams``' order.
    """
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams)  # hparams.yaml; no summary since default_hp_metric=False
            writer = logger.experiment.file_writer  # SummaryWriter's public FileWriter, as add_hparams uses it
            for summary in hparams_summaries(hparams, dict.fromkeys(HPARAM_METRICS, 0.0)):
                writer.add_summary(summary)
            writer.flush()


class RunRecord(Callback):
    """Print the site -> norm table, and write it and the HParams summary into the run folder, once data is ready.

    It acts in ``setup``, after ``prepare_data`` and the data module's own ``setup``, so a run that
    fails on missing data shows only its error and leaves no record that looks like a started run.
    """

    def __init__(self, hparams: dict[str, object], placement_table: str | None) -> None:
        self.hparams = hparams
        self.placement_table = placement_table

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if self.placement_table and trainer.is_global_zero:
            print(self.placement_table)
        if not trainer.is_global_zero or log_dir is None or trainer.fast_dev_run:
            return  # no run folder to record into (fast_dev_run logs nothing)
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        if self.placement_table:
            (log_dir / "placement.txt").write_text(self.placement_table + "\n")
        log_hparams_to_tensorboard(trainer, self.hparams)
        print(f"run folder: {log_dir}\nTensorBoard: tensorboard --logdir {log_dir.parent}", file=sys.stderr)
