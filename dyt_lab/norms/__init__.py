"""Normalization layers, their registry, and a converter for any model.

``build_norm(spec, num_features, layout)`` is the one way to build a norm; ``convert_norms``
swaps the norms of an existing model; the DyT family lives in ``dyt_lab.norms.dyt``.
"""

from dyt_lab.norms.baselines import GroupNorm, Identity, LayerNorm2d, RMSNorm2d, TokenBatchNorm
from dyt_lab.norms.convert import convert_norms
from dyt_lab.norms.dyt import DYT_FAMILY, CenteredDyT, ChannelAlphaDyT, ChannelShiftDyT, Derf, DyT, ShiftedDyT
from dyt_lab.norms.factored import FactoredNorm
from dyt_lab.norms.pointwise import PointwiseNorm
from dyt_lab.norms.registry import (
    LAYOUTS,
    NORMS,
    Layout,
    NormError,
    NormSpec,
    available_norms,
    build_norm,
    norm_factory,
    norm_name,
)

__all__ = [
    "DYT_FAMILY", "LAYOUTS", "NORMS", "CenteredDyT", "ChannelAlphaDyT", "ChannelShiftDyT", "Derf", "DyT",
    "FactoredNorm", "GroupNorm", "Identity", "LayerNorm2d", "Layout", "NormError", "NormSpec", "PointwiseNorm",
    "RMSNorm2d", "ShiftedDyT", "TokenBatchNorm", "available_norms", "build_norm", "convert_norms", "norm_factory",
    "norm_name",
]
