"""BatchNorm taken apart: ``weight * squash(s * (x - m)) + bias``, with each part chosen on its own.

Three options. Any combination builds (2 centers x 5 scales x 3 squashes = 30 layers):

- ``center``: ``"none"`` (m = 0) or ``"batch"`` (m = per-channel batch mean in training, running
  mean in eval).
- ``scale``: ``"none"`` (s = 1); ``"batch_std"`` (s = 1 / sqrt(var + eps), batch var in training,
  running var in eval: BatchNorm's); ``"running_std"`` (s = 1 / sqrt(running_var + eps) in training
  too, so the scale carries no batch noise and no gradient); ``"alpha"`` (one learnable scalar, DyT's);
  ``"alpha_channel"`` (a learnable alpha per channel).
- ``squash``: ``"none"``, ``"tanh"`` or ``"erf"``.

Known points: (batch, batch_std, none) is ``nn.BatchNorm2d``, (none, alpha, tanh) is ``DyT``,
(batch, alpha, tanh) is ``CenteredDyT`` and (none, none, none) is a per-channel affine.

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
tanh or erf. A profile of the MNIST5k testbed (ResNet-tiny, one thread) put a third of a step in
the written-out formula's element-wise passes and their backward.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dyt_lab.norms import functional
from dyt_lab.norms.dyt import check_alpha_init, check_num_features

Center = Literal["none", "batch"]
Scale = Literal["none", "batch_std", "running_std", "alpha", "alpha_channel"]
Squash = Literal["none", "tanh", "erf"]
CENTERS: tuple[str, ...] = ("none", "batch")
SCALES: tuple[str, ...] = ("none", "batch_std", "running_std", "alpha", "alpha_channel")
SQUASHES: tuple[str, ...] = ("none", "tanh", "erf")
_SQUASH_FNS = {"none": lambda z: z, **functional.SQUASHES}  # the DyT family's squashes, and none


def check_choice(option: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a one-line ValueError naming both."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(choices)}; got {value!r}")
    return value


class FactoredNorm(nn.Module):
    """``weight * squash(s * (x - m)) + bias`` with center, scale and squash chosen separately."""

    def __init__(
        self,
        num_features: int,
        center: Center = "batch",
        scale: Scale = "batch_std",
        squash: Squash = "none",
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
        self.num_features = check_num_features(num_features)
        self.center = check_choice("center", center, CENTERS)
        self.scale = check_choice("scale", scale, SCALES)
        self.squash = check_choice("squash", squash, SQUASHES)
        self.alpha_init = check_alpha_init(alpha_init)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < math.inf:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.eps, self.momentum = float(eps), float(momentum)
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

    def _channel_dim(self, x: torch.Tensor) -> int:
        return x.dim() - 1 if self.channels_last else 1

    def _along_channels(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """View a ``(C,)`` or ``(1,)`` vector so it broadcasts against ``x`` along its channel dim."""
        shape = [1] * x.dim()
        shape[self._channel_dim(x)] = -1
        return v.view(shape)  # (1, ..., 1, C) or (1, C, 1, ...)

    def squashed(self, x: torch.Tensor) -> torch.Tensor:
        """``squash(s * (x - m))``, the output before the affine; in training it updates running stats."""
        return _SQUASH_FNS[self.squash](self.squash_argument(x))

    def divisor(self) -> torch.Tensor | None:
        """The ``(C,)`` std that eval mode divides by (running_std, and batch_std in eval), else None."""
        if self.running_var is None:
            return None
        return (self.running_var + self.eps).sqrt()

    def squash_argument(self, x: torch.Tensor) -> torch.Tensor:
        """``s * (x - m)``, the argument of the squash, shaped like ``x`` (what diagnostics call saturated)."""
        dim = self._channel_dim(x)
        reduce_dims = [d for d in range(x.dim()) if d != dim]
        n = x.numel() // max(x.shape[dim], 1)  # values per channel
        z, mean = self._centered(x)
        batch_var = None
        if self.training and self.running_var is not None:
            batch_var = z.square().mean(reduce_dims)  # (C,): biased var around m (E[x^2] if m = 0)
        if self.scale == "batch_std" and self.training:
            z = z * self._along_channels(torch.rsqrt(batch_var + self.eps), x)
        elif self.running_var is not None:  # eval, or running_std in training: no batch noise
            z = z * self._along_channels(torch.rsqrt(self.running_var.to(x.dtype) + self.eps), x)
        elif self.alpha is not None:
            z = z * self._along_channels(self.alpha, x)  # (1,) or (C,)
        if self.training and self.num_batches_tracked is not None:
            self._update_running_stats(mean, batch_var, n)
        return z

    def _centered(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x - m`` and, in training with ``center="batch"``, the ``(C,)`` batch mean m (else None)."""
        if self.center == "none":
            return x, None
        if not self.training:
            return x - self._along_channels(self.running_mean.to(x.dtype), x), None
        mean = x.mean([d for d in range(x.dim()) if d != self._channel_dim(x)])  # (C,)
        return x - self._along_channels(mean, x), mean

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor | None, var: torch.Tensor | None, n: int) -> None:
        """``running = (1 - momentum) * running + momentum * batch``, with BN's unbiased variance."""
        self.num_batches_tracked.add_(1)
        if mean is not None:
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
        if var is not None:
            if self.center == "batch":  # a mean was estimated from the same n values: Bessel's correction
                if n < 2:
                    raise ValueError(f"expected more than 1 value per channel when training, got {n}")
                var = var * (n / (n - 1))
            self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``weight * squash(s * (x - m)) + bias`` along the channel dimension."""
        if self.fused and self.squash == "none" and self.scale == "batch_std" and self.center == "batch":
            return self._batch_norm(x)
        if self.fused and self.squash != "none" and self.alpha is not None:
            x, mean = self._centered(x)
            if mean is not None:
                self._update_running_stats(mean, None, 0)
            return functional.dynamic_squash(x, self.alpha, None, self.weight, self.bias,
                                             channels_last=self.channels_last, squash=self.squash)
        return self.squashed(x) * self._along_channels(self.weight, x) + self._along_channels(self.bias, x)

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
