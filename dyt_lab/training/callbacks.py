"""Training callbacks: stop a diverged run at once, loudly, and mark its folder; log the learning rate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from dyt_lab.errors import DivergenceError, check_int

__all__ = ["DIVERGED_MARKER", "DivergenceStop", "LearningRateLog", "RunOutcome"]

DIVERGED_MARKER = "DIVERGED"  # a file in the run folder: this run did not finish, do not trust it


class DivergenceStop(Callback):
    """Raise ``DivergenceError`` within a few steps of the loss becoming NaN or inf.

    The run's TensorBoard log gets a ``run/status`` text and its folder a ``DIVERGED`` file, so
    neither a person nor a study mistakes it for a finished run; the CLI then exits non-zero.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        """Build the callback.

        Args:
            check_every_n_steps: read the loss every this many steps (each read syncs a GPU).
        """
        self.check_every_n_steps = check_int("divergence check_every_n_steps", check_every_n_steps)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int):
        if (batch_idx + 1) % self.check_every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or bool(torch.isfinite(loss.detach()).all()):
            return
        value = loss.detach().float().item()
        message = f"diverged at step {trainer.global_step} (loss={'nan' if math.isnan(value) else value})"
        self._record(trainer, message)
        raise DivergenceError(message)

    @staticmethod
    def _record(trainer: Trainer, message: str) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("run/status", message, global_step=trainer.global_step)
                logger.experiment.flush()
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / DIVERGED_MARKER).write_text(message + "\n")


class LearningRateLog(Callback):
    """Log the learning rate as ``lr``, or as ``lr/<group>`` per parameter group where their rates differ.

    Lightning's LearningRateMonitor names every group of a multi-group optimizer (``lr-AdamW/pg1``,
    ``lr-AdamW/pg2``) and has no option to do otherwise; ImageClassifier's two groups differ only in
    weight decay, so they share one curve here.
    """

    def __init__(self, logging_interval: Literal["step", "epoch"] = "step") -> None:
        """Build the callback.

        Args:
            logging_interval: log every ``log_every_n_steps`` optimizer steps ('step') or once per epoch ('epoch').
        """
        self.logging_interval = logging_interval
        self.names: list[list[str]] = []

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.names = []
        for i, optimizer in enumerate(trainer.optimizers):
            name = "lr" if len(trainer.optimizers) == 1 else f"lr-{i}"
            groups = optimizer.param_groups
            if len({g.get("initial_lr", g["lr"]) for g in groups}) == 1:  # the schedule scales them alike
                self.names.append([name] * len(groups))
            else:
                self.names.append([f"{name}/{g.get('name', f'pg{j + 1}')}" for j, g in enumerate(groups)])

    def _log(self, trainer: Trainer) -> None:
        rates = {name: group["lr"] for names, optimizer in zip(self.names, trainer.optimizers)
                 for name, group in zip(names, optimizer.param_groups)}
        for logger in trainer.loggers:
            logger.log_metrics(rates, step=trainer.global_step)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self.logging_interval == "step" and trainer.global_step % trainer.log_every_n_steps == 0:
            self._log(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.logging_interval == "epoch":
            self._log(trainer)


class RunOutcome(Callback):
    """What became of a run that stopped with an exception: interrupted, or failed before its first step.

    Lightning catches Ctrl-C inside ``fit`` and exits 1; the CLI reads ``interrupted`` afterwards to
    say how to resume (``resumable``: the run folder holds the last.ckpt ``--ckpt_path last`` finds)
    and exit 130 instead. A run that fails before training (data missing, a bad folder) has nothing
    worth keeping: ``discard`` names the run folder this run created for nothing.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self.resumable = False
        self.discard: Path | None = None
        self._new_folder: Path | None = None

    def watch_folder(self, trainer: Trainer) -> None:
        """Remember the run folder if it does not exist yet (a resumed run's folder is never discarded)."""
        if not trainer.is_global_zero or trainer.logger is None:  # only rank 0 writes the run folder
            return
        log_dir = trainer.logger.log_dir
        if not log_dir or Path(log_dir).exists():
            return
        created = Path(log_dir).absolute()  # the outermost folder this run will create: runs/<name>/version_0, or runs/
        while not created.parent.exists():
            created = created.parent
        self._new_folder = created

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.interrupted = isinstance(exception, KeyboardInterrupt)
        # the checkpoint folders, not trainer.log_dir: that is a collective, and one rank alone may be here
        self.resumable = any((Path(cb.dirpath) / "last.ckpt").is_file()
                             for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None))
        folder = self._new_folder
        if not self.interrupted and trainer.global_step == 0 and folder is not None and folder.is_dir() \
                and not any(folder.rglob("*.ckpt")):
            self.discard = folder
