"""Normalization layers, their registry, and a converter for any model.

``build_norm(spec, num_features, layout)`` is the one way to build a norm; ``convert_norms``
swaps the norms of an existing model; the DyT family (one layer, ``DynamicSquash``, and its named
presets) lives in ``dyt_lab.norms.dyt``, the vocabulary of its options in ``dyt_lab.norms.options``.
"""

from dyt_lab.norms.baselines import GroupNorm, Identity, LayerNorm2d, RMSNorm2d, TokenBatchNorm
from dyt_lab.norms.convert import convert_norms
from dyt_lab.norms.dyt import (
    DYT_FAMILY,
    CenteredDyT,
    ChannelAlphaDyT,
    ChannelShiftDyT,
    Derf,
    DynamicSquash,
    DyT,
    PointwiseNorm,
    ShiftedDyT,
)
from dyt_lab.norms.factored import FactoredNorm
from dyt_lab.norms.registry import (
    LAYOUTS,
    NORMS,
    Layout,
    NormError,
    NormSpec,
    available_norms,
    build_norm,
    choices_of,
    named_points,
    norm_factory,
    norm_name,
)

__all__ = [
    "DYT_FAMILY", "LAYOUTS", "NORMS", "CenteredDyT", "ChannelAlphaDyT", "ChannelShiftDyT", "Derf", "DyT",
    "DynamicSquash", "FactoredNorm", "GroupNorm", "Identity", "LayerNorm2d", "Layout", "NormError", "NormSpec",
    "PointwiseNorm", "RMSNorm2d", "ShiftedDyT", "TokenBatchNorm", "available_norms", "build_norm", "choices_of",
    "convert_norms", "named_points", "norm_factory", "norm_name",
]
