"""Linear warmup then cosine decay, stepped every optimizer step (the paper's schedule)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from dyt_lab.errors import ConfigError


class WarmupCosineLR(LRScheduler):
    """Linear warmup over ``warmup_fraction`` of training, then cosine decay to ``min_lr_ratio * lr``.

    ``total_steps=None`` means "the whole run": ``ImageClassifier`` fills it in from the trainer's
    ``estimated_stepping_batches`` before the first step, so YAML configs need not know it.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        """Build the schedule.

        Args:
            optimizer: the optimizer whose learning rates are scheduled.
            warmup_fraction: share of all steps spent warming up linearly from ~0 to the base lr.
            min_lr_ratio: final learning rate as a fraction of the base lr.
            total_steps: optimizer steps in the whole run (None: taken from the trainer).
        """
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"--model.scheduler.init_args.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError(f"--model.scheduler.init_args.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_fraction = warmup_fraction
        self.min_lr_ratio = min_lr_ratio
        self.total_steps = total_steps
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        """The learning-rate multiplier at optimizer step ``step`` (0-based)."""
        total = self.total_steps or 1
        warmup = round(self.warmup_fraction * total)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def set_total_steps(self, total_steps: int) -> None:
        """Fix the run length and re-apply the learning rate of the current step under it."""
        self.total_steps = max(1, int(total_steps))
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
