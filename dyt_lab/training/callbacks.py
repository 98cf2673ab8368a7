"""Training callbacks: stop a diverged run at once, loudly, and mark its folder."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

DIVERGED_MARKER = "DIVERGED"  # a file in the run folder: this run did not finish, do not trust it


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite; the message says at which step."""


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
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps

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
