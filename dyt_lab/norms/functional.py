"""The DyT-family formula, ``weight * squash(alpha * x + shift) + bias``, as plain functions.

``reference_dynamic_squash`` is the formula written out in eager PyTorch: the ground truth the
tests compare everything against. ``dynamic_squash`` is what the layers call; it routes to the
fused implementation (``dyt_lab.norms.fused``) when asked and when that path supports the input.
"""

from __future__ import annotations

import torch

from dyt_lab.norms.channels import per_channel

__all__ = ["SQUASHES", "dynamic_squash", "per_channel", "reference_dynamic_squash", "scale_shift"]  # per_channel: its old home
SQUASHES = {"tanh": torch.tanh, "erf": torch.erf}


def scale_shift(
    x: torch.Tensor, alpha: torch.Tensor, shift: torch.Tensor | None, channels_last: bool
) -> torch.Tensor:
    """``alpha * x + shift``, the argument of the squash."""
    z = x * per_channel(alpha, x, channels_last)
    if shift is not None:
        z = z + per_channel(shift, x, channels_last)
    return z


def reference_dynamic_squash(
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    channels_last: bool = True,
    squash: str = "tanh",
) -> torch.Tensor:
    """The formula as written: ``weight * squash(alpha * x + shift) + bias`` (several passes)."""
    z = scale_shift(x, alpha, shift, channels_last)
    s = SQUASHES[squash](z)
    return s * per_channel(weight, x, channels_last) + per_channel(bias, x, channels_last)


def dynamic_squash(
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    channels_last: bool = True,
    squash: str = "tanh",
    fused: bool = True,
) -> torch.Tensor:
    """``weight * squash(alpha * x + shift) + bias``, fused where supported, else the reference."""
    if fused:
        from dyt_lab.norms import fused as fused_impl  # imported lazily: it may build a kernel

        out = fused_impl.try_fused(x, alpha, shift, weight, bias, channels_last, squash)
        if out is not None:
            return out
    return reference_dynamic_squash(x, alpha, shift, weight, bias, channels_last, squash)
