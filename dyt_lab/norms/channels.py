"""Broadcasting a per-channel parameter against an input in either layout."""

from __future__ import annotations

import torch


def per_channel(param: torch.Tensor, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """View a ``(C,)`` or ``(1,)`` parameter so it broadcasts against ``x`` along its channel dim."""
    if channels_last or param.numel() == 1:
        return param
    return param.view(-1, *([1] * (x.dim() - 2)))  # (C, 1, 1, ...) against (N, C, *spatial)
