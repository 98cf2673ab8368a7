"""The DyT-family formula, ``weight * squash(alpha * x + shift) + bias``, as plain functions.

``reference_dynamic_squash`` is the formula written out in eager PyTorch: the ground truth the
tests compare everything against. ``dynamic_squash`` is what the layers call; it routes to the
fused implementation (``dyt_lab.norms.fused``) when asked and when that path supports the input.
"""

from __future__ import annotations

import torch


def per_channel(param: torch.Tensor, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """View a ``(C,)`` or ``(1,)`` parameter so it broadcasts against ``x`` along its channel dim."""
    if channels_last or param.numel() == 1:
        return param
    return param.view(-1, *([1] * (x.dim() - 2)))  # (C, 1, 1, ...) against (N, C, *spatial)


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
    s = torch.tanh(z) if squash == "tanh" else torch.erf(z)
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
