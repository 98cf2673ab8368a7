"""Dynamic Tanh (DyT) and its variants: element-wise squashing layers that stand in for a norm.

Every layer here computes ``weight * squash(alpha * x + shift) + bias`` per element, with no
statistics over tokens or channels (except ``CenteredDyT``, which subtracts a per-channel mean).
The variants differ only in the shape of ``alpha`` and ``shift`` and in the squashing function,
so they share one implementation, ``DyT``, configured by three class attributes.

Layouts: ``channels_last=True`` takes tokens ``(..., C)``; ``channels_last=False`` takes feature
maps ``(N, C, *spatial)``. Parameters are stored with shape ``(C,)`` (or ``(1,)`` for scalars) in
both layouts, so a state_dict moves between layouts and between the fused and reference paths.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from dyt_lab.errors import check_int
from dyt_lab.norms import functional

Squash = Literal["tanh", "erf"]
ParamShape = Literal["scalar", "channel"]


def check_num_features(num_features: object) -> int:
    """Return ``num_features`` if it is a positive int, else raise a one-line ValueError."""
    return check_int("num_features", num_features, error=ValueError)


def check_alpha_init(alpha_init: object) -> float:
    """Return ``alpha_init`` as a float if it is a finite number, else raise a one-line ValueError."""
    if isinstance(alpha_init, bool) or not isinstance(alpha_init, (int, float)) or not math.isfinite(alpha_init):
        raise ValueError(f"alpha_init must be a finite number, got {alpha_init!r}")
    return float(alpha_init)


class DyT(nn.Module):
    """Dynamic Tanh (Zhu et al., CVPR 2025): ``y = weight * tanh(alpha * x) + bias``.

    ``alpha`` is one learnable scalar (init ``alpha_init``); ``weight`` (ones) and ``bias``
    (zeros) are per channel. Subclasses change the squashing function and the shapes of
    ``alpha`` and of an optional learnable ``shift`` added inside the squash.
    """

    squash: Squash = "tanh"
    alpha_shape: ParamShape = "scalar"
    shift_shape: ParamShape | None = None

    def __init__(
        self,
        num_features: int,
        alpha_init: float = 0.5,
        channels_last: bool = True,
        fused: bool = True,
    ) -> None:
        """Build the layer.

        Args:
            num_features: number of channels C.
            alpha_init: initial value of alpha (the paper's alpha0; 0.5 by default).
            channels_last: True for tokens ``(..., C)``, False for feature maps ``(N, C, *spatial)``.
            fused: use the fused kernel where it supports the input (same values, less memory).
        """
        super().__init__()
        self.num_features = check_num_features(num_features)
        self.alpha_init = check_alpha_init(alpha_init)
        self.channels_last = bool(channels_last)
        self.fused = bool(fused)
        alpha_len = 1 if self.alpha_shape == "scalar" else num_features
        self.alpha = nn.Parameter(torch.full((alpha_len,), self.alpha_init))
        if self.shift_shape is None:
            self.register_parameter("shift", None)
        else:
            shift_len = 1 if self.shift_shape == "scalar" else num_features
            self.shift = nn.Parameter(torch.zeros(shift_len))
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def squash_input(self, x: torch.Tensor) -> torch.Tensor:
        """The tensor fed to the squash's ``alpha * (.) + shift``; ``CenteredDyT`` centers it first."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``weight * squash(alpha * x + shift) + bias`` along the channel dimension."""
        return functional.dynamic_squash(
            self.squash_input(x),
            self.alpha,
            self.shift,
            self.weight,
            self.bias,
            channels_last=self.channels_last,
            squash=self.squash,
            fused=self.fused,
        )

    def squash_argument(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha * x + shift`` (after ``squash_input``), the argument of the squash, shaped like ``x``."""
        return functional.scale_shift(self.squash_input(x), self.alpha, self.shift, self.channels_last)

    def squashed(self, x: torch.Tensor) -> torch.Tensor:
        """The output before the affine, ``squash(alpha * x + shift)``: what the S-curve plots show."""
        return functional.SQUASHES[self.squash](self.squash_argument(x))

    def extra_repr(self) -> str:
        layout = "channels_last" if self.channels_last else "channels_first"
        return f"{self.num_features}, alpha_init={self.alpha_init}, {layout}"


class ShiftedDyT(DyT):
    """DyT with a learnable scalar shift: ``y = weight * tanh(alpha * x + shift) + bias`` (shift init 0)."""

    shift_shape = "scalar"


class ChannelShiftDyT(DyT):
    """DyT with a per-channel shift: ``y = weight * tanh(alpha * x + shift_c) + bias`` (shift_c init 0)."""

    shift_shape = "channel"


class ChannelAlphaDyT(DyT):
    """DyT with a per-channel alpha: ``y = weight * tanh(alpha_c * x) + bias`` (alpha_c init alpha_init)."""

    alpha_shape = "channel"


class Derf(DyT):
    """Dynamic erf (Derf): ``y = weight * erf(alpha * x + shift) + bias``, scalar alpha and shift (init 0)."""

    squash = "erf"
    shift_shape = "scalar"


class CenteredDyT(DyT):
    """Centered DyT: ``y = weight * tanh(alpha * (x - mean_c)) + bias``.

    ``mean_c`` is the per-channel batch mean in training and a running mean in eval, exactly as
    BatchNorm keeps it, but nothing is divided by a std. It isolates whether BN's centering is
    what DyT lacks in CNNs.
    """

    def __init__(
        self,
        num_features: int,
        alpha_init: float = 0.5,
        channels_last: bool = True,
        fused: bool = True,
        momentum: float = 0.1,
    ) -> None:
        """Build the layer.

        Args:
            num_features: number of channels C.
            alpha_init: initial value of alpha.
            channels_last: True for tokens ``(..., C)``, False for feature maps ``(N, C, *spatial)``.
            fused: use the fused kernel where it supports the input.
            momentum: running-mean update rate, as in BatchNorm (0.1).
        """
        super().__init__(num_features, alpha_init, channels_last, fused)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))

    def squash_input(self, x: torch.Tensor) -> torch.Tensor:
        channel_dim = x.dim() - 1 if self.channels_last else 1
        reduce_dims = [d for d in range(x.dim()) if d != channel_dim]
        shape = [1] * x.dim()
        shape[channel_dim] = self.num_features
        if self.training:
            mean = x.mean(dim=reduce_dims)  # (C,)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
        else:
            mean = self.running_mean.to(x.dtype)
        return x - mean.view(shape)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.momentum}"


DYT_FAMILY = (DyT, ShiftedDyT, ChannelShiftDyT, ChannelAlphaDyT, Derf, CenteredDyT)
