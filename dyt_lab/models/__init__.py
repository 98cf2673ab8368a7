"""Plain ``nn.Module`` models whose every norm site is named and pluggable, and timm/torchvision ones by name."""

from dyt_lab.models.external import NetBuilder, TimmModel, TorchvisionModel, site_table
from dyt_lab.models.placement import (
    NormPlacement,
    PlacementError,
    describe_norm,
    describe_placement,
    format_placement,
    sites_of,
)
from dyt_lab.models.resnet import RESNET_PRESETS, ResNet, resnet_site_presets
from dyt_lab.models.vit import VIT_PRESETS, VIT_SITE_PRESETS, ViT

__all__ = [
    "RESNET_PRESETS", "VIT_PRESETS", "VIT_SITE_PRESETS", "NetBuilder", "NormPlacement", "PlacementError", "ResNet",
    "TimmModel", "TorchvisionModel", "ViT", "describe_norm", "describe_placement", "format_placement",
    "resnet_site_presets", "site_table", "sites_of",
]
