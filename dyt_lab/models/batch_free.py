"""Batch-free building blocks for the ResNet: standardised convolutions, branch gains, NF scaling.

Each block replaces one thing BatchNorm does without reading a batch statistic:

- ``ScaledStdConv2d``: scaled weight standardisation (NF-ResNets, Brock et al. 2021, "Characterizing
  signal propagation to close the performance gap in unnormalized ResNets", and their repository
  google-deepmind/deepmind-research, ``nfnets``). The conv's weight is re-centred and re-scaled per
  output channel at every forward, so its output keeps the scale of its input whatever the weights
  grow to, as BN keeps it, but from the weights instead of the activations.
- ``BranchScale``: the residual branch's ``alpha * gain * f(x)``: a learnable scalar gain at the end
  of each branch (SkipInit, De & Smith 2020, "Batch normalization biases residual blocks towards the
  identity function in deep networks": init 0, so every block starts as the identity), and NF-ResNets'
  fixed ``alpha``.
- ``nf_next_std``: NF-ResNets' bookkeeping of the expected std of each block's input, whose
  reciprocal rescales the branch's input so every branch starts from unit variance.

Named bundles of these options (and of norm, alpha rule and gradient clipping) are recipes
(``dyt_lab.models.recipes``): a batch-free design is one flag, ``--model.recipe bn_free``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dyt_lab.errors import ConfigError

WS_EPS = 1e-4  # NF-ResNets' floor on fan_in * var: a dead (constant) filter is not blown up to inf


class ScaledStdConv2d(nn.Conv2d):
    """Conv2d with scaled weight standardisation: ``W_hat = gain * (W - mean) / (std * sqrt(fan_in))`` per output channel.

    mean and std (population) are taken over each output channel's ``fan_in = C_in/groups * kh * kw``
    weights; ``gain`` is a learnable ``(C_out,)`` vector (init 1). So every output channel's effective
    filter has mean 0 and unit norm times ``gain``: for unit-variance inputs its output has variance
    ``gain**2`` at init and ever after, which is what BN's division by the batch std gave the next layer.
    The weight stays an ordinary parameter (initialised and weight-decayed as any conv's); ``gain`` is
    1-D, so the optimizer groups do not decay it (as NF-ResNets do not).
    """

    def __init__(self, *args: Any, eps: float = WS_EPS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(self.out_channels))

    def standardized_weight(self) -> torch.Tensor:
        """The effective weight ``(C_out, C_in/groups, kh, kw)`` the convolution uses."""
        w = self.weight
        fan_in = w[0].numel()
        mean = w.mean(dim=(1, 2, 3), keepdim=True)  # (C_out, 1, 1, 1)
        var = w.var(dim=(1, 2, 3), keepdim=True, correction=0)
        scale = torch.rsqrt(torch.clamp(var * fan_in, min=self.eps)) * self.gain.view(-1, 1, 1, 1)
        return (w - mean) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class BranchScale(nn.Module):
    """The end of a residual branch: ``alpha * gain * x``, alpha fixed (NF-ResNets' 0.2), gain learnable (SkipInit)."""

    def __init__(self, alpha: float = 1.0, gain_init: float | None = None) -> None:
        super().__init__()
        self.alpha = alpha
        if gain_init is None:
            self.register_parameter("gain", None)
        else:
            self.gain = nn.Parameter(torch.full((1,), float(gain_init)))  # (1,): a scalar, not weight-decayed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.alpha if self.alpha != 1.0 else x
        return out * self.gain if self.gain is not None else out

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, gain={'off' if self.gain is None else 'learnable'}"


def nf_next_std(std: float, projection: bool, alpha: float) -> float:
    """NF-ResNets' expected std of the stream after a block whose input has expected std ``std``.

    The block adds ``alpha * f(x / std)``, of variance ``alpha**2`` where ``f`` preserves variance, so
    the variance grows as ``std**2 + alpha**2``. A block with a projection shortcut (a stage's
    transition block) computes its shortcut from ``x / std`` as well, which resets the variance to 1
    before the branch adds its ``alpha**2``. The stem's output counts as std 1.
    """
    return math.sqrt((1.0 if projection else std ** 2) + alpha ** 2)


def check_positive(option: str, value: float | None) -> float | None:
    """Return ``value`` if None or a finite number > 0, else a one-line ConfigError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value <= 0):
        raise ConfigError(f"{option} must be a finite number > 0 (or null: off), got {value!r}")
    return value


def check_flag(option: str, value: object) -> bool:
    """``value`` as a bool (None: False), or a one-line ConfigError."""
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{option} must be true or false (or null: off), got {value!r}")
    return bool(value)


def check_finite(option: str, value: float | None) -> float | None:
    """Return ``value`` if None or a finite number, else a one-line ConfigError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        raise ConfigError(f"{option} must be a finite number (or null: off), got {value!r}")
    return value
