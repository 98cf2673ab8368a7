"""The point-wise family as one layer: ``weight * squash(alpha * (x - m) + shift) + bias``, each part an option.

The DyT variants in ``dyt.py`` are fixed points of this layer (``dyt`` is tanh, scalar alpha, no
shift, no centring; ``derf`` is erf with a scalar shift). A search that crosses the parts (squash x
shift x per-channel alpha x centring) names one registry entry, ``dyt_general``, with four options.
The squash is any function of ``functional.SQUASHES`` (the Derf paper's search, and ``none``).
"""

from __future__ import annotations

from typing import Literal

import torch

from dyt_lab.norms import functional
from dyt_lab.norms.dyt import DyT
from dyt_lab.norms.factored import check_choice

# The names live in functional.SQUASHES alone; the Literal is built from them for jsonargparse's --help.
POINTWISE_SQUASHES: tuple[str, ...] = tuple(functional.SQUASHES)
PointwiseSquash = Literal[POINTWISE_SQUASHES]  # type: ignore[valid-type]
Shape = Literal["scalar", "channel"]
Shift = Literal["none", "scalar", "channel"]
Center = Literal["none", "sample"]
SHAPES: tuple[str, ...] = ("scalar", "channel")
SHIFTS: tuple[str, ...] = ("none", "scalar", "channel")
CENTERS: tuple[str, ...] = ("none", "sample")


class PointwiseNorm(DyT):
    """``weight * squash(alpha * (x - m) + shift) + bias``: squash, alpha's shape, shift and centring chosen.

    ``center="sample"`` subtracts each sample's own per-channel mean over its positions (``H, W`` of a
    feature map ``(N, C, H, W)``, the tokens of ``(N, T, C)``), as InstanceNorm centres but without
    dividing by a std. It uses no batch statistic, in training or in inference: every sample's output
    depends on that sample alone, so the layer stays batch-free (any batch size, no running buffers,
    train == eval). It is no longer point-wise, though, in training or in inference: each output
    reads the mean of its whole channel map, a reduction over ``H x W`` as LayerNorm's is over ``C``.
    ``center="none"`` keeps the layer point-wise. ``squash="none"`` leaves ``alpha * (x - m) + shift``
    linear (the control: no squashing; alpha then only sets the scale ``alpha_rule data`` starts from).
    tanh and erf run on the fused kernel (``fused=True``); the other squashes run their eager formula.
    """

    def __init__(
        self,
        num_features: int,
        squash: PointwiseSquash = "tanh",
        alpha: Shape = "scalar",
        shift: Shift = "none",
        center: Center = "none",
        alpha_init: float = 0.5,
        channels_last: bool = True,
        fused: bool = True,
    ) -> None:
        """Build the layer (the defaults are DyT).

        Args:
            num_features: number of channels C.
            squash: a point-wise function by name (functional.SQUASHES: tanh, erf, arctan, isru, ...; 'none').
            alpha: 'scalar' (one learnable alpha, DyT's) or 'channel' (one per channel).
            shift: 'none', 'scalar' or 'channel': a learnable shift inside the squash (init 0).
            center: 'none' or 'sample' (subtract each sample's per-channel mean over its positions).
            alpha_init: initial alpha.
            channels_last: True for tokens ``(..., C)``, False for feature maps ``(N, C, *spatial)``.
            fused: use the fused kernel where it supports the input and the squash (tanh and erf).
        """
        # instance attributes shadow DyT's class attributes, which its constructor reads
        self.squash = check_choice("squash", squash, POINTWISE_SQUASHES)
        self.alpha_shape = check_choice("alpha", alpha, SHAPES)
        shift = check_choice("shift", shift, SHIFTS)
        self.shift_shape = None if shift == "none" else shift
        self.center = check_choice("center", center, CENTERS)
        super().__init__(num_features, alpha_init, channels_last, fused)

    def squash_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` minus each sample's per-channel mean over its positions (``center="sample"``), else ``x``."""
        if self.center == "none":
            return x
        positions = range(1, x.dim() - 1) if self.channels_last else range(2, x.dim())  # (N, T, C) / (N, C, H, W)
        if not positions:
            raise ValueError(f"center='sample' needs positions to average over; got an input of shape {tuple(x.shape)}")
        return x - x.mean(dim=tuple(positions), keepdim=True)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, squash={self.squash}, alpha={self.alpha_shape}, "
                f"shift={self.shift_shape or 'none'}, center={self.center}")
