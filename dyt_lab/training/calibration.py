"""``alpha_rule: data`` in a fit: alpha set from the first training batch, once, on a fresh run only.

The pure-torch part (hooks, stds, setting alpha) is ``dyt_lab.models.alpha_rules.calibrate_alpha``;
this mixin decides when it runs. It runs at the first training batch of global step 0 and never
again: a flag, saved in every checkpoint, tells a resumed run that its alpha is already calibrated
(and trained since), so resuming never overwrites it.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info

from dyt_lab.models.alpha_rules import calibrate_alpha

CHECKPOINT_KEY = "dyt_lab_alpha_calibrated"


class AlphaCalibration:
    """Mixin for a LightningModule whose ``net`` has ``alpha_rule``: calibrates alpha before the first step."""

    _alpha_calibrated = False  # set per instance once calibrated, or when a checkpoint is loaded

    def on_train_batch_start(self, batch, batch_idx: int):
        if (getattr(self.net, "alpha_rule", "constant") == "data" and not self._alpha_calibrated
                and self.trainer.global_step == 0):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch  # images (N, C, H, W)
            # Under DDP every rank measures its own batch; the mean std over ranks sets the same alpha everywhere.
            stds = calibrate_alpha(self.net, x, reduce=lambda t: self.trainer.strategy.reduce(t, reduce_op="mean"))
            self._alpha_calibrated = True
            scales = torch.cat([s.flatten() for s in stds.values()])
            rank_zero_info(f"alpha_rule data: alpha set at {len(stds)} sites from the first batch "
                           f"(input std {scales.min().item():.3g} to {scales.max().item():.3g})")
        return super().on_train_batch_start(batch, batch_idx)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if getattr(self.net, "alpha_rule", "constant") == "data":  # other rules' checkpoints stay as they were
            checkpoint[CHECKPOINT_KEY] = self._alpha_calibrated
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A checkpoint without the key predates alpha rules: its alpha is trained, never recalibrate it.
        self._alpha_calibrated = bool(checkpoint.get(CHECKPOINT_KEY, True))
        super().on_load_checkpoint(checkpoint)
