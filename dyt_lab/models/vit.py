"""Vision Transformer with a named, pluggable norm at every site.

Pre-norm blocks as in torchvision's ``vision_transformer.py`` and timm's ``VisionTransformer``,
so the ImageNet presets have exactly their parameter counts. Norm sites:
``blocks.{i}.norm1`` (pre-attention), ``blocks.{i}.norm2`` (pre-MLP) and ``norm`` (final);
all are channels-last, since they see tokens ``(B, T, C)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dyt_lab.errors import ConfigError, check_int
from dyt_lab.models.alpha_rules import AlphaRule, apply_alpha_rule
from dyt_lab.models.arguments import check_preset, pick
from dyt_lab.models.placement import NormPlacement, NormSitesMixin, Placement, Rules
from dyt_lab.norms import NormSpec


@dataclass(frozen=True)
class ViTPreset:
    """An architecture preset: the defaults of the ViT arguments of the same names."""

    image_size: int
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_ratio: float
    pool: str


VIT_PRESETS: dict[str, ViTPreset] = {
    "vit_b_16": ViTPreset(image_size=224, patch_size=16, dim=768, depth=12, heads=12, mlp_ratio=4.0,
                          pool="cls"),  # torchvision vit_b_16
    "vit_l_16": ViTPreset(image_size=224, patch_size=16, dim=1024, depth=24, heads=16, mlp_ratio=4.0,
                          pool="cls"),  # torchvision vit_l_16
    "vit_tiny": ViTPreset(image_size=224, patch_size=16, dim=192, depth=12, heads=3, mlp_ratio=4.0,
                          pool="cls"),  # timm ViT-Ti/16
    "vit_small": ViTPreset(image_size=224, patch_size=16, dim=384, depth=12, heads=6, mlp_ratio=4.0,
                           pool="cls"),  # timm ViT-S/16
    # 64 tokens of 4x4 patches
    "vit_cifar": ViTPreset(image_size=32, patch_size=4, dim=192, depth=6, heads=3, mlp_ratio=2.0, pool="avg"),
    # 49 tokens, MNIST-5k
    "vit_mnist": ViTPreset(image_size=28, patch_size=4, dim=64, depth=4, heads=4, mlp_ratio=2.0, pool="avg"),
    # 16 tokens, sklearn digits
    "vit_digits": ViTPreset(image_size=8, patch_size=2, dim=64, depth=4, heads=4, mlp_ratio=2.0, pool="avg"),
}
VIT_SITE_PRESETS = {
    "all": ["*"],
    "attn": ["blocks.*.norm1"],
    "mlp": ["blocks.*.norm2"],
    "blocks": ["blocks.*"],
    "final": ["norm"],
}


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``p`` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, C / heads)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, name: str, dim: int, heads: int, mlp_ratio: float, drop_path: float,
                 dropout: float, placement: NormPlacement) -> None:
        super().__init__()
        self.norm1 = placement.build(f"{name}.norm1", dim, "channels_last")
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = placement.build(f"{name}.norm2", dim, "channels_last")
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(NormSitesMixin, nn.Module):
    """Vision Transformer: conv patch embedding, pre-norm blocks, final norm, linear head."""

    def __init__(
        self,
        preset: str = "vit_tiny",
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int | None = None,
        patch_size: int | None = None,
        dim: int | None = None,
        depth: int | None = None,
        heads: int | None = None,
        mlp_ratio: float | None = None,
        pool: Literal["cls", "avg"] | None = None,
        drop_path: float = 0.0,
        dropout: float = 0.0,
        norm: NormSpec = "layernorm",
        placement: Placement = "all",
        base_norm: NormSpec = "layernorm",
        rules: Rules | None = None,
        alpha_init: float | None = None,
        alpha_rule: AlphaRule = "constant",
    ) -> None:
        """Build a ViT from a preset, with any preset value overridden.

        Args:
            preset: architecture preset: vit_b_16, vit_l_16, vit_tiny, vit_small, vit_cifar, vit_mnist, vit_digits.
            num_classes: number of output classes.
            in_channels: image channels (3 for RGB, 1 for grey).
            image_size: image side in pixels (None: the preset's).
            patch_size: patch side in pixels; must divide image_size (None: the preset's).
            dim: token width (None: the preset's).
            depth: number of blocks (None: the preset's).
            heads: attention heads; must divide dim (None: the preset's).
            mlp_ratio: MLP hidden width over dim (None: the preset's).
            pool: 'cls' (class token) or 'avg' (mean of tokens) before the head (None: the preset's).
            drop_path: stochastic depth rate of the last block (linearly increasing from 0).
            dropout: dropout in attention and MLP.
            norm: the norm placed at the sites selected by placement (a registry name or mapping).
            placement: presets (all, attn, mlp, blocks, final) or globs selecting the sites that get norm.
            base_norm: the norm at every site not selected by placement.
            rules: {pattern: norm, ...} or [{pattern: norm}, ...], tried in order before placement; first match wins.
            alpha_init: alpha0 for every DyT-family site whose spec does not set its own.
            alpha_rule: alpha0 per site: constant (alpha_init), depth (alpha_init / sqrt(k), k the site's block,
                the final norm k = depth), data (alpha_init / std of the site's input on the first training batch).
        """
        super().__init__()
        check_preset("ViT", preset, VIT_PRESETS)
        p = VIT_PRESETS[preset]
        image_size, patch_size = pick(image_size, p.image_size), pick(patch_size, p.patch_size)
        dim, depth, heads = pick(dim, p.dim), pick(depth, p.depth), pick(heads, p.heads)
        mlp_ratio, pool = pick(mlp_ratio, p.mlp_ratio), pick(pool, p.pool)
        for name, value in [("image_size", image_size), ("patch_size", patch_size), ("dim", dim),
                            ("depth", depth), ("heads", heads), ("num_classes", num_classes),
                            ("in_channels", in_channels)]:
            check_int(f"ViT {name}", value)
        if image_size % patch_size:
            divisors = [d for d in range(1, image_size + 1) if image_size % d == 0]
            raise ConfigError(f"ViT patch_size {patch_size} does not divide image_size {image_size}; "
                              f"valid patch sizes: {', '.join(map(str, divisors))}")
        if dim % heads:
            raise ConfigError(f"ViT dim {dim} is not divisible by heads {heads}")
        if pool not in ("cls", "avg"):
            raise ConfigError(f"unknown ViT pool '{pool}'; valid: cls, avg")

        self.placement = NormPlacement("ViT", VIT_SITE_PRESETS, norm, placement, base_norm, rules, alpha_init)
        self.pool = pool
        num_tokens = (image_size // patch_size) ** 2 + (pool == "cls")
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[
            Block(f"blocks.{i}", dim, heads, mlp_ratio, rates[i], dropout, self.placement) for i in range(depth)
        ])
        self.norm = self.placement.build("norm", dim, "channels_last")
        self.head = nn.Linear(dim, num_classes)
        self.placement.check_all_matched()
        self._init_weights()
        self.alpha_rule = apply_alpha_rule(self, alpha_rule, self.site_depths())

    def site_depths(self) -> dict[str, int]:
        """Site -> k, the 1-based index of its block; the final norm reads the last block's output: k = depth."""
        depth = len(self.blocks)
        return {site: int(site.split(".")[1]) + 1 if site.startswith("blocks.") else depth
                for site in self.norm_sites()}

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW should not decay besides the 1-D ones (timm's convention)."""
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, in_channels, H, W)`` -> normalized tokens ``(B, T, dim)``."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, H/p * W/p, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self.blocks(x + self.pos_embed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, in_channels, H, W)`` -> logits ``(B, num_classes)``."""
        tokens = self.forward_features(x)
        pooled = tokens[:, 0] if self.pool == "cls" else tokens.mean(dim=1)
        return self.head(pooled)
