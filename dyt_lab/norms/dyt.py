"""The DyT family: ``weight * squash(alpha * (x - m) + shift) + bias``, one layer and its named presets.

``DynamicSquash`` computes it, each part an option of the vocabulary in ``options.py``: ``squash``,
``alpha`` (scalar or per channel), ``shift`` (none, scalar or per channel) and ``center`` (none, each
sample's mean, or the batch mean with a running mean for eval). The registry's DyT names are presets of
it: ``dyt_general`` (``PointwiseNorm``) leaves every option open; ``dyt``, ``dyt_shift``, ... fix them
(their ``preset``) and take only ``alpha_init`` (and ``momentum``, where they center by batch).
``factored``'s alpha points compute the same formula with the same functions (``functional``).

Layouts: ``channels_last=True`` takes tokens ``(..., C)``; ``channels_last=False`` takes feature
maps ``(N, C, *spatial)``. Parameters are stored with shape ``(C,)`` (or ``(1,)`` for scalars) in
both layouts, so a state_dict moves between layouts and between the fused and reference paths.
"""

from __future__ import annotations

import torch
from torch import nn

from dyt_lab.norms import functional, options


class DynamicSquash(nn.Module):
    """``weight * squash(alpha * (x - m) + shift) + bias`` with squash, alpha, shift and center chosen.

    ``center="sample"`` uses no batch statistic, in training or in inference (any batch size, no
    running buffers, train == eval), but is no longer point-wise: each output reads the mean of its
    whole channel map, a reduction over ``H x W`` as LayerNorm's is over ``C``. ``center="batch"`` keeps a
    ``running_mean`` buffer, as BatchNorm, and divides by no std. ``squash="none"`` leaves the layer
    linear (the control). tanh and erf run on the fused kernel (``fused=True``); the other squashes run
    their eager formula.
    """

    preset: dict[str, str] | None = None  # the options a named subclass fixes; None: all of them open

    def __init__(
        self,
        num_features: int,
        squash: options.Squash = "tanh",
        alpha: options.Shape = "scalar",
        shift: options.Shift = "none",
        center: options.Center = "none",
        alpha_init: float = 0.5,
        momentum: float = 0.1,
        channels_last: bool = True,
        fused: bool = True,
    ) -> None:
        """Build the layer (the defaults are DyT).

        Args:
            num_features: number of channels C.
            squash: a point-wise function by name (functional.SQUASHES: tanh, erf, arctan, isru, ...; 'none').
            alpha: 'scalar' (one learnable alpha, DyT's) or 'channel' (one per channel).
            shift: 'none', 'scalar' or 'channel': a learnable shift inside the squash (init 0).
            center: 'none', 'sample' (each sample's per-channel mean over its positions) or 'batch'.
            alpha_init: initial alpha (the paper's alpha0).
            momentum: running-mean update rate of center 'batch', as in BatchNorm (0.1).
            channels_last: True for tokens ``(..., C)``, False for feature maps ``(N, C, *spatial)``.
            fused: use the fused kernel where it supports the input and the squash (same values, less memory).
        """
        super().__init__()
        self.num_features = options.check_num_features(num_features)
        self.squash = options.check_choice("squash", squash, options.Squash)
        self.alpha_shape = options.check_choice("alpha", alpha, options.Shape)
        shift = options.check_choice("shift", shift, options.Shift)
        self.shift_shape = None if shift == "none" else shift  # None: no shift parameter, as labels read it
        self.center = options.check_choice("center", center, options.Center)
        self.alpha_init = options.check_alpha_init(alpha_init)
        self.momentum = options.check_momentum(momentum)
        self.channels_last = bool(channels_last)
        self.fused = bool(fused)
        self.alpha = nn.Parameter(torch.full((1 if self.alpha_shape == "scalar" else num_features,), self.alpha_init))
        if self.shift_shape is None:
            self.register_parameter("shift", None)
        else:
            self.shift = nn.Parameter(torch.zeros(1 if self.shift_shape == "scalar" else num_features))
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features) if self.center == "batch" else None)

    def squash_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x - m``, what alpha multiplies (``x`` itself without a center); center 'batch' in training
        updates ``running_mean``."""
        return functional.subtract_mean(x, self.center, self.channels_last, self.running_mean, self.momentum,
                                        self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``weight * squash(alpha * (x - m) + shift) + bias`` along the channel dimension."""
        return functional.dynamic_squash(self.squash_input(x), self.alpha, self.shift, self.weight, self.bias,
                                         channels_last=self.channels_last, squash=self.squash, fused=self.fused)

    def squash_argument(self, x: torch.Tensor) -> torch.Tensor:
        """``alpha * (x - m) + shift``, the argument of the squash, shaped like ``x``."""
        return functional.scale_shift(self.squash_input(x), self.alpha, self.shift, self.channels_last)

    def squashed(self, x: torch.Tensor) -> torch.Tensor:
        """The output before the affine, ``squash(alpha * (x - m) + shift)``: what the S-curve plots show."""
        return functional.SQUASHES[self.squash](self.squash_argument(x))

    def extra_repr(self) -> str:
        layout = "channels_last" if self.channels_last else "channels_first"
        text = f"{self.num_features}, alpha_init={self.alpha_init}, {layout}"
        text += f", momentum={self.momentum}" if self.center == "batch" else ""
        if self.preset is None:  # a preset's class name says its options
            text += (f", squash={self.squash}, alpha={self.alpha_shape}, shift={self.shift_shape or 'none'}, "
                     f"center={self.center}")
        return text


class PointwiseNorm(DynamicSquash):
    """``dyt_general``: the family with every option open; the other DyT names are presets of it."""


class DyT(DynamicSquash):
    """Dynamic Tanh (Zhu et al., CVPR 2025): ``y = weight * tanh(alpha * x) + bias``.

    ``alpha`` is one learnable scalar (init ``alpha_init``); ``weight`` (ones) and ``bias`` (zeros)
    are per channel. Its subclasses are the other named presets: each fixes the family's options.
    """

    preset: dict[str, str] = {"squash": "tanh", "alpha": "scalar", "shift": "none", "center": "none"}

    def __init__(self, num_features: int, alpha_init: float = 0.5, channels_last: bool = True,
                 fused: bool = True) -> None:
        """Build the layer.

        Args:
            num_features: number of channels C.
            alpha_init: initial value of alpha (the paper's alpha0; 0.5 by default).
            channels_last: True for tokens ``(..., C)``, False for feature maps ``(N, C, *spatial)``.
            fused: use the fused kernel where it supports the input (same values, less memory).
        """
        super().__init__(num_features, alpha_init=alpha_init, channels_last=channels_last, fused=fused, **self.preset)


class ShiftedDyT(DyT):
    """DyT with a learnable scalar shift: ``y = weight * tanh(alpha * x + shift) + bias`` (shift init 0)."""

    preset = {**DyT.preset, "shift": "scalar"}


class ChannelShiftDyT(DyT):
    """DyT with a per-channel shift: ``y = weight * tanh(alpha * x + shift_c) + bias`` (shift_c init 0)."""

    preset = {**DyT.preset, "shift": "channel"}


class ChannelAlphaDyT(DyT):
    """DyT with a per-channel alpha: ``y = weight * tanh(alpha_c * x) + bias`` (alpha_c init alpha_init)."""

    preset = {**DyT.preset, "alpha": "channel"}


class Derf(DyT):
    """Dynamic erf (Derf): ``y = weight * erf(alpha * x + shift) + bias``, scalar alpha and shift (init 0)."""

    preset = {**DyT.preset, "squash": "erf", "shift": "scalar"}


class CenteredDyT(DyT):
    """Centered DyT: ``y = weight * tanh(alpha * (x - mean_c)) + bias``.

    ``mean_c`` is the per-channel batch mean in training and a running mean in eval, exactly as
    BatchNorm keeps it, but nothing is divided by a std. It isolates whether BN's centering is
    what DyT lacks in CNNs.
    """

    preset = {**DyT.preset, "center": "batch"}

    def __init__(self, num_features: int, alpha_init: float = 0.5, channels_last: bool = True,
                 fused: bool = True, momentum: float = 0.1) -> None:
        """Build the layer.

        Args:
            num_features: number of channels C.
            alpha_init: initial value of alpha.
            channels_last: True for tokens ``(..., C)``, False for feature maps ``(N, C, *spatial)``.
            fused: use the fused kernel where it supports the input.
            momentum: running-mean update rate, as in BatchNorm (0.1).
        """
        super().__init__(num_features, alpha_init, channels_last, fused)
        self.momentum = options.check_momentum(momentum)


# The family's registry classes, each a DynamicSquash (what ``isinstance(m, DYT_FAMILY)`` asks).
DYT_FAMILY = (DyT, ShiftedDyT, ChannelShiftDyT, ChannelAlphaDyT, Derf, CenteredDyT, PointwiseNorm)


def preset_formula(preset: dict[str, str]) -> str:
    """A preset's formula for the registry's table: ``w * tanh(a * x + s) + b``."""
    alpha = "a_c" if preset["alpha"] == "channel" else "a"
    x = {"none": "x", "sample": "(x - mean_HW)", "batch": "(x - mean_batch)"}[preset["center"]]
    shift = {"none": "", "scalar": " + s", "channel": " + s_c"}[preset["shift"]]
    return f"w * {preset['squash']}({alpha} * {x}{shift}) + b"


def preset_params(preset: dict[str, str]) -> str:
    """A preset's parameters and buffers for the registry's table: ``a, s: scalar; w, b: (C,)``."""
    shaped = [(name, preset[option]) for name, option in (("a", "alpha"), ("s", "shift"))]
    scalars = [name for name, shape in shaped if shape == "scalar"]
    channels = [name for name, shape in shaped if shape == "channel"] + ["w", "b"]
    parts = [f"{', '.join(scalars)}: scalar"] if scalars else []
    parts.append(f"{', '.join(channels)}: (C,)")
    return "; ".join(parts + (["running mean"] if preset["center"] == "batch" else []))
