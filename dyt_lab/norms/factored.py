"""BatchNorm taken apart: ``weight * squash(s * (x - m)) + bias``, with each part chosen on its own.

Three options of the vocabulary in ``options.py``. Any combination builds (2 centers x 5 scales x 3
squashes = 30 layers):

- ``center``: ``"none"`` (m = 0) or ``"batch"`` (m = per-channel batch mean in training, running
  mean in eval).
- ``scale``: ``"none"`` (s = 1); ``"batch_std"`` (s = 1 / sqrt(var + eps), batch var in training,
  running var in eval: BatchNorm's); ``"running_std"`` (s = 1 / sqrt(running_var + eps) in training
  too, so the scale carries no batch noise and no gradient); ``"alpha"`` (one learnable scalar, DyT's);
  ``"alpha_channel"`` (a learnable alpha per channel).
- ``squash``: ``"none"``, ``"tanh"`` or ``"erf"``.

Known points: (batch, batch_std, none) is ``nn.BatchNorm2d``; (none, alpha, tanh) is ``DyT``,
(batch, alpha, tanh) is ``CenteredDyT`` and (none, alpha_channel, tanh) is ``ChannelAlphaDyT``: at an
alpha scale the layer is the DyT family's (``dyt_general`` with that center, alpha and squash), computed
by the family's own functions, so those points equal the named norms exactly. (none, none, none) is a
per-channel affine.

The variance is taken around the center the layer uses: around the batch mean with
``center="batch"``, and around 0 with ``center="none"`` (the second moment E[x^2]), so a std scale
never centers behind the user's back. Running statistics follow ``nn.BatchNorm`` exactly:
``running = (1 - momentum) * running + momentum * batch``; the variance is stored unbiased
(times n / (n - 1)) and normalised with biased. E[x^2] estimates no mean, so it needs no Bessel
correction and is stored as is. ``running_std`` in training divides by the running var from
before this batch's update, then updates it.

``forward`` runs the formula as written (``fused=False``, the reference in the tests) or, by default,
the library kernel of the layer it equals, where there is one: ``F.batch_norm`` at BatchNorm's point
and the fused DyT kernel wherever the scale is alpha (after the centering, if any) and the squash
tanh or erf, since the written-out formula's element-wise passes and their backward are slow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dyt_lab.norms import functional, options
from dyt_lab.norms.channels import per_channel

# Familiar names of points of (center, scale, squash), for labels. Without a center, a std scale divides by
# the root mean square around 0 (E[x^2]), not by a standard deviation: those points say "RMS".
NAMED_POINTS: dict[tuple[str, str, str], str] = {
    ("batch", "batch_std", "none"): "BatchNorm", ("none", "alpha", "tanh"): "DyT",
    ("batch", "alpha", "tanh"): "dyt_centered", ("none", "none", "none"): "affine only",
    ("batch", "batch_std", "tanh"): "BN + tanh", ("batch", "running_std", "none"): "BN, no batch noise",
    ("none", "batch_std", "none"): "batch RMS only", ("none", "batch_std", "tanh"): "batch RMS + tanh",
    ("none", "running_std", "none"): "running RMS only", ("none", "running_std", "tanh"): "running RMS + tanh",
    ("batch", "alpha", "none"): "BN center only", ("batch", "alpha_channel", "tanh"): "centered, per-channel alpha",
}


class FactoredNorm(nn.Module):
    """``weight * squash(s * (x - m)) + bias`` with center, scale and squash chosen separately."""

    def __init__(
        self,
        num_features: int,
        center: options.FactoredCenter = "batch",
        scale: options.Scale = "batch_std",
        squash: options.FactoredSquash = "none",
        alpha_init: float = 0.5,
        eps: float = 1e-5,
        momentum: float = 0.1,
        channels_last: bool = True,
        fused: bool = True,
    ) -> None:
        """Build the layer (the defaults are BatchNorm).

        Args:
            num_features: number of channels C.
            center: 'none' (m = 0) or 'batch' (batch mean in training, running mean in eval).
            scale: 'none', 'batch_std' (BN's), 'running_std' (running std in training too), 'alpha' or 'alpha_channel'.
            squash: 'none', 'tanh' or 'erf', applied before the affine.
            alpha_init: initial alpha of the 'alpha' and 'alpha_channel' scales (ignored by the others).
            eps: added to the variance of the std scales.
            momentum: running-statistics update rate, as in BatchNorm (0.1).
            channels_last: True for tokens ``(..., C)``, False for feature maps ``(N, C, *spatial)``.
            fused: use the library kernel of the layer this point equals, where there is one (same values).
        """
        super().__init__()
        self.num_features = options.check_num_features(num_features)
        self.center = options.check_choice("center", center, options.FactoredCenter)
        self.scale = options.check_choice("scale", scale, options.Scale)
        self.squash = options.check_choice("squash", squash, options.FactoredSquash)
        self.alpha_init = options.check_alpha_init(alpha_init)
        self.eps, self.momentum = options.check_eps(eps), options.check_momentum(momentum)
        self.channels_last = bool(channels_last)
        self.fused = bool(fused)
        tracks_mean, tracks_var = center == "batch", scale in ("batch_std", "running_std")
        # Buffers named as nn.BatchNorm's; absent (None) where this combination does not need them.
        self.register_buffer("running_mean", torch.zeros(num_features) if tracks_mean else None)
        self.register_buffer("running_var", torch.ones(num_features) if tracks_var else None)
        tracked = torch.tensor(0, dtype=torch.long) if tracks_mean or tracks_var else None
        self.register_buffer("num_batches_tracked", tracked)
        if scale in ("alpha", "alpha_channel"):
            self.alpha = nn.Parameter(torch.full((1 if scale == "alpha" else num_features,), self.alpha_init))
        else:
            self.register_parameter("alpha", None)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def divisor(self) -> torch.Tensor | None:
        """The ``(C,)`` std that eval mode divides by (running_std, and batch_std in eval), else None."""
        if self.running_var is None:
            return None
        return (self.running_var + self.eps).sqrt()

    def _centered(self, x: torch.Tensor) -> torch.Tensor:
        """``x - m``; in training it counts the batch and moves the running mean (center 'batch')."""
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return functional.subtract_mean(x, self.center, self.channels_last, self.running_mean, self.momentum,
                                        self.training)

    def squash_argument(self, x: torch.Tensor) -> torch.Tensor:
        """``s * (x - m)``, the argument of the squash, shaped like ``x`` (what diagnostics call saturated);
        in training it updates the running statistics."""
        z = self._centered(x)
        if self.alpha is not None:
            return z * per_channel(self.alpha, x, self.channels_last)  # (1,) or (C,)
        if self.running_var is None:  # scale 'none'
            return z
        if not self.training:
            return z * per_channel(torch.rsqrt(self.running_var.to(x.dtype) + self.eps), x, self.channels_last)
        channel_dim = x.dim() - 1 if self.channels_last else 1
        batch_var = z.square().mean([d for d in range(x.dim()) if d != channel_dim])  # (C,): around m
        var = batch_var if self.scale == "batch_std" else self.running_var.to(x.dtype)  # running: no batch noise
        z = z * per_channel(torch.rsqrt(var + self.eps), x, self.channels_last)
        self._update_running_var(batch_var, x.numel() // max(x.shape[channel_dim], 1))
        return z

    @torch.no_grad()
    def _update_running_var(self, var: torch.Tensor, n: int) -> None:
        """``running = (1 - momentum) * running + momentum * batch``, with BN's unbiased variance."""
        if self.center == "batch":  # a mean was estimated from the same n values: Bessel's correction
            if n < 2:
                raise ValueError(f"expected more than 1 value per channel when training, got {n}")
            var = var * (n / (n - 1))
        self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)

    def squashed(self, x: torch.Tensor) -> torch.Tensor:
        """``squash(s * (x - m))``, the output before the affine; in training it updates running stats."""
        return functional.SQUASHES[self.squash](self.squash_argument(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``weight * squash(s * (x - m)) + bias`` along the channel dimension."""
        if self.fused and self.squash == "none" and self.scale == "batch_std" and self.center == "batch":
            return self._batch_norm(x)
        if self.alpha is not None:  # the DyT family's point, through its own function (fused where it can be)
            return functional.dynamic_squash(self._centered(x), self.alpha, None, self.weight, self.bias,
                                             self.channels_last, self.squash, self.fused)
        w, b = (per_channel(p, x, self.channels_last) for p in (self.weight, self.bias))
        return self.squashed(x) * w + b

    def _batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm's point through ``F.batch_norm``: the same statistics and running updates."""
        if self.training:
            self.num_batches_tracked.add_(1)
        flat = x.reshape(-1, self.num_features, 1) if self.channels_last else x  # the channels at dim 1
        out = F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                           self.momentum, self.eps)
        return out.reshape(x.shape) if self.channels_last else out

    def extra_repr(self) -> str:
        layout = "channels_last" if self.channels_last else "channels_first"
        alpha = f", alpha_init={self.alpha_init:g}" if self.alpha is not None else ""
        return (f"{self.num_features}, center={self.center}, scale={self.scale}, squash={self.squash}"
                f"{alpha}, eps={self.eps:g}, momentum={self.momentum:g}, {layout}")
