"""The normalization layers DyT is compared against, in the layouts PyTorch does not ship.

PyTorch has LayerNorm and RMSNorm for channels-last tokens and BatchNorm2d/GroupNorm for
channels-first maps. The registry also needs the other halves: LayerNorm and RMSNorm over the
channels of a feature map (as timm's LayerNorm2d), and BatchNorm over the channels of tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dyt_lab.errors import check_int


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)  # (N, C, *S) -> (N, *S, C)


def _to_channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1)  # (N, *S, C) -> (N, C, *S)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a feature map ``(N, C, *spatial)``, at each position."""

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True) -> None:
        """Build the layer.

        Args:
            num_features: number of channels C.
            eps: added to the variance.
            affine: learn a per-channel weight and bias.
        """
        super().__init__(num_features, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(_to_channels_last(x), self.normalized_shape, self.weight, self.bias, self.eps)
        return _to_channels_first(y)


class RMSNorm2d(nn.RMSNorm):
    """RMSNorm over the channels of a feature map ``(N, C, *spatial)``, at each position."""

    def __init__(self, num_features: int, eps: float | None = None, affine: bool = True) -> None:
        """Build the layer.

        Args:
            num_features: number of channels C.
            eps: added to the mean square (None: the dtype's machine epsilon, as nn.RMSNorm).
            affine: learn a per-channel weight.
        """
        super().__init__(num_features, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _to_channels_first(super().forward(_to_channels_last(x)))


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm for tokens ``(..., C)``: per-channel statistics over every other dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (N*T, C): BatchNorm1d's (batch, channel) layout
        return super().forward(flat).reshape(x.shape)


class GroupNorm(nn.GroupNorm):
    """GroupNorm over a feature map; ``num_groups`` is lowered to ``gcd(num_groups, C)`` so any C works."""

    def __init__(self, num_features: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True) -> None:
        """Build the layer.

        Args:
            num_features: number of channels C.
            num_groups: groups to split C into, at most (gcd(num_groups, C) is used).
            eps: added to the variance.
            affine: learn a per-channel weight and bias.
        """
        check_int("num_groups", num_groups, error=ValueError)
        super().__init__(math.gcd(num_groups, num_features), num_features, eps=eps, affine=affine)


class Identity(nn.Identity):
    """No normalization: ``y = x``. Takes (and ignores) ``num_features`` to fit the norm contract."""

    def __init__(self, num_features: int) -> None:
        """Build the layer.

        Args:
            num_features: number of channels C (unused).
        """
        super().__init__()
        self.num_features = num_features

    def extra_repr(self) -> str:
        return str(self.num_features)
