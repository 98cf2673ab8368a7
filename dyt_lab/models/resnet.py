"""ResNet with a named, pluggable norm at every site.

Laid out like torchvision's ``resnet.py`` (v1.5: the stride sits in the 3x3 conv of a
Bottleneck), so ``resnet18/34/50`` have exactly its parameter counts with BatchNorm. Norm sites,
all channels-first since they see feature maps ``(N, C, H, W)``:
``stem.norm``, ``layer{s}.{b}.norm{k}`` and ``layer{s}.{b}.downsample.norm``.

Batch-free options (``dyt_lab.models.batch_free``; all off by default, so the default model is
torchvision's): scaled weight standardisation of every conv, a learnable gain at the end of each
residual branch (SkipInit), NF-ResNets' alpha/beta scaling of the branches, and named recipes that
bundle them with a norm and an alpha0 rule.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from dyt_lab.errors import ConfigError, check_int
from dyt_lab.models import recipes
from dyt_lab.models.alpha_rules import AlphaRule, apply_alpha_rule
from dyt_lab.models.arguments import check_preset, pick
from dyt_lab.models.batch_free import (
    BranchScale,
    ScaledStdConv2d,
    check_finite,
    check_flag,
    check_positive,
    nf_next_std,
)
from dyt_lab.models.placement import NormPlacement, NormSitesMixin, Placement, Rules
from dyt_lab.norms import NormSpec


@dataclass(frozen=True)
class ResNetPreset:
    """An architecture preset: the defaults of the ResNet arguments of the same names (layers: blocks per stage)."""

    block: str
    layers: list[int]
    widths: list[int]
    stem: str


RESNET_PRESETS: dict[str, ResNetPreset] = {
    "resnet18": ResNetPreset(block="basic", layers=[2, 2, 2, 2], widths=[64, 128, 256, 512], stem="imagenet"),
    "resnet34": ResNetPreset(block="basic", layers=[3, 4, 6, 3], widths=[64, 128, 256, 512], stem="imagenet"),
    "resnet50": ResNetPreset(block="bottleneck", layers=[3, 4, 6, 3], widths=[64, 128, 256, 512],
                             stem="imagenet"),
    # He et al. 2016, CIFAR
    "resnet20": ResNetPreset(block="basic", layers=[3, 3, 3], widths=[16, 32, 64], stem="cifar"),
    "resnet32": ResNetPreset(block="basic", layers=[5, 5, 5], widths=[16, 32, 64], stem="cifar"),
    "resnet56": ResNetPreset(block="basic", layers=[9, 9, 9], widths=[16, 32, 64], stem="cifar"),
    # embedded 8x8 / 28x28 data
    "resnet_tiny": ResNetPreset(block="basic", layers=[1, 1, 1], widths=[16, 32, 64], stem="cifar"),
}


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, standardized: bool = False) -> nn.Conv2d:
    cls = ScaledStdConv2d if standardized else nn.Conv2d
    return cls(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


ConvFactory = Callable[..., nn.Conv2d]  # (c_in, c_out, kernel, stride) -> conv


class Stem(nn.Module):
    """ImageNet stem (7x7/2 conv, norm, ReLU, 3x3/2 max-pool) or CIFAR stem (3x3 conv, norm, ReLU)."""

    def __init__(self, in_channels: int, width: int, kind: str, placement: NormPlacement,
                 conv: ConvFactory = _conv) -> None:
        super().__init__()
        imagenet = kind == "imagenet"
        self.conv = conv(in_channels, width, 7, 2) if imagenet else conv(in_channels, width, 3)
        self.norm = placement.build("stem.norm", width, "channels_first")
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if imagenet else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.norm(self.conv(x))))


class Downsample(nn.Module):
    """Projection shortcut: 1x1 conv with stride, then a norm site."""

    def __init__(self, name: str, c_in: int, c_out: int, stride: int, placement: NormPlacement,
                 conv: ConvFactory = _conv) -> None:
        super().__init__()
        self.conv = conv(c_in, c_out, 1, stride)
        self.norm = placement.build(f"{name}.downsample.norm", c_out, "channels_first")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ResidualBlock(nn.Module):
    """``relu(scale(branch(x / input_std)) + shortcut)``: what Basic and Bottleneck blocks share.

    ``shortcut`` is ``x`` itself, or the projection of ``x / input_std``. ``input_std`` is 1 unless
    NF scaling is on (NF-ResNets' beta is its reciprocal: the branch starts from unit variance);
    ``scale`` (``BranchScale``: NF's alpha and the SkipInit gain) is None when both are off. With a
    gain of 0 the block is ``relu(shortcut)``, which is ``x`` itself for an identity shortcut, since
    ``x`` is the previous block's (or the stem's) ReLU output.
    """

    expansion = 1
    downsample: Downsample | None

    def __init__(self, input_std: float = 1.0, scale: BranchScale | None = None) -> None:
        super().__init__()
        self.input_std = input_std
        self.scale = scale

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x if self.input_std == 1.0 else x / self.input_std
        out = self.branch(inp)
        if self.scale is not None:
            out = self.scale(out)
        shortcut = x if self.downsample is None else self.downsample(inp)
        return torch.relu(out + shortcut)


class BasicBlock(ResidualBlock):
    """Two 3x3 convs, each followed by a norm site: ``branch(x) = norm2(conv2(relu(norm1(conv1(x)))))``."""

    expansion = 1

    def __init__(self, name: str, c_in: int, width: int, stride: int, placement: NormPlacement,
                 conv: ConvFactory = _conv, input_std: float = 1.0, scale: BranchScale | None = None) -> None:
        super().__init__(input_std, scale)
        self.conv1 = conv(c_in, width, 3, stride)
        self.norm1 = placement.build(f"{name}.norm1", width, "channels_first")
        self.conv2 = conv(width, width, 3)
        self.norm2 = placement.build(f"{name}.norm2", width, "channels_first")
        needs_projection = stride != 1 or c_in != width
        self.downsample = Downsample(name, c_in, width, stride, placement, conv) if needs_projection else None

    def last_norm(self) -> nn.Module:
        return self.norm2

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(out))


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand by 4, each followed by a norm site."""

    expansion = 4

    def __init__(self, name: str, c_in: int, width: int, stride: int, placement: NormPlacement,
                 conv: ConvFactory = _conv, input_std: float = 1.0, scale: BranchScale | None = None) -> None:
        super().__init__(input_std, scale)
        c_out = width * self.expansion
        self.conv1 = conv(c_in, width, 1)
        self.norm1 = placement.build(f"{name}.norm1", width, "channels_first")
        self.conv2 = conv(width, width, 3, stride)
        self.norm2 = placement.build(f"{name}.norm2", width, "channels_first")
        self.conv3 = conv(width, c_out, 1)
        self.norm3 = placement.build(f"{name}.norm3", c_out, "channels_first")
        needs_projection = stride != 1 or c_in != c_out
        self.downsample = Downsample(name, c_in, c_out, stride, placement, conv) if needs_projection else None

    def last_norm(self) -> nn.Module:
        return self.norm3

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = torch.relu(self.norm2(self.conv2(out)))
        return self.norm3(self.conv3(out))


def _defaults() -> dict:
    """ResNet's argument defaults: what a recipe may fill in."""
    return {name: p.default for name, p in inspect.signature(ResNet.__init__).parameters.items() if name != "self"}


def resolve_recipe(args: dict) -> dict:
    """ResNet's (or ResNetClassifier's) arguments with their recipe's options written in: what a run records.

    Idempotent, and a no-op without a recipe but for ``norm``/``alpha_rule`` null, which become their defaults.
    """
    return recipes.resolve(args, _defaults())


def resnet_site_presets(block: str) -> dict[str, list[str]]:
    """Named site groups for a ResNet; ``last_in_block`` depends on the block type."""
    last = "norm2" if block == "basic" else "norm3"
    presets = {
        "all": ["*"],
        "stem": ["stem.norm"],
        "downsample": ["*.downsample.norm"],
        "first_in_block": ["layer*.norm1"],
        "last_in_block": [f"layer*.{last}"],
    }
    presets.update({f"stage{s}": [f"layer{s}.*"] for s in range(1, 5)})
    return presets


class ResNet(NormSitesMixin, nn.Module):
    """ResNet: stem, stages of residual blocks, global average pool, linear head."""

    def __init__(
        self,
        preset: str = "resnet18",
        num_classes: int = 1000,
        in_channels: int = 3,
        block: Literal["basic", "bottleneck"] | None = None,
        layers: list[int] | None = None,
        widths: list[int] | None = None,
        stem: Literal["imagenet", "cifar"] | None = None,
        zero_init_residual: bool = False,
        norm: NormSpec | None = "batchnorm",
        placement: Placement = "all",
        base_norm: NormSpec = "batchnorm",
        rules: Rules | None = None,
        alpha_init: float | None = None,
        alpha_rule: AlphaRule | None = "constant",
        recipe: str | None = None,
        weight_standardization: bool | None = None,
        branch_gain: float | None = None,
        nf_alpha: float | None = None,
        agc: float | None = None,
    ) -> None:
        """Build a ResNet from a preset, with any preset value overridden.

        Args:
            preset: architecture preset: resnet18, resnet34, resnet50, resnet20, resnet32, resnet56, resnet_tiny.
            num_classes: number of output classes.
            in_channels: image channels (3 for RGB, 1 for grey).
            block: 'basic' (two 3x3 convs) or 'bottleneck' (1x1, 3x3, 1x1 x4) (None: the preset's).
            layers: blocks per stage (None: the preset's).
            widths: channels per stage, before the bottleneck expansion (None: the preset's).
            stem: 'imagenet' (7x7/2 conv + max-pool) or 'cifar' (3x3 conv) (None: the preset's).
            zero_init_residual: start each block's last norm weight at zero, so blocks start as identity.
            norm: the norm placed at the sites selected by placement (a registry name or mapping) (None: the
                recipe's, or batchnorm).
            placement: presets (all, stem, downsample, stage1..4, first_in_block, last_in_block) or globs.
            base_norm: the norm at every site not selected by placement.
            rules: {pattern: norm, ...} or [{pattern: norm}, ...], tried in order before placement; first match wins.
            alpha_init: alpha0 for every DyT-family site whose spec does not set its own.
            alpha_rule: alpha0 per site: constant (alpha_init), depth (alpha_init / sqrt(k), k the site's block,
                stem 1), data (alpha_init / std of the site's input on the first training batch) (None: the
                recipe's, or constant).
            recipe: a named bundle of these options (dyt_lab.models.recipes; bn_free: weight_standardization, a
                dyt_general norm centred per sample with a shift, alpha_rule data and its alpha_init, see
                docs/findings.md; nf_resnet: NF-ResNets' weight_standardization, nf_alpha, branch_gain 0, no norm
                and agc); it sets each option it names that is left at its default or null, an option set
                otherwise wins.
            weight_standardization: scaled weight standardisation of every conv, W = gain * (W - mean) / (std *
                sqrt(fan_in)) per output channel, learnable gain init 1 (NF-ResNets) (None: off, or the recipe's).
            branch_gain: a learnable scalar at the end of each residual branch, starting at this value (0: SkipInit,
                every block starts as relu(shortcut)) (None: no gain, or the recipe's).
            nf_alpha: NF-ResNets' signal propagation: block = relu(nf_alpha * branch(x / beta) + shortcut), beta the
                expected std of the block input, 1 after the stem and after each projection, growing as
                sqrt(beta^2 + nf_alpha^2) (0.2 in NF-ResNets) (None: off, or the recipe's).
            agc: lambda of unit-wise adaptive gradient clipping of every parameter but the head's (NF-Nets); the
                model only records it, ResNetClassifier adds dyt_lab.training.clipping.AdaptiveGradientClipping(agc)
                to the callbacks (None: off, or the recipe's).
        """
        super().__init__()
        passed = locals()  # the arguments as passed: the recipe resolves them, a blocked recipe rebuilds from them
        given = {name: passed[name] for name in _defaults()}
        check_preset("ResNet", preset, RESNET_PRESETS)
        self.recipe = recipe
        # option -> (the value used, the recipe's), for the site table
        self.recipe_overrides = {key: (given[key], value) for key, value in recipes.overridden(given, _defaults()).items()}
        try:
            self._build(**resolve_recipe(given))
        except ConfigError as err:  # an option set over the recipe may be why: name it rather than the symptom
            raise recipes.blocked(given, _defaults(), err, ResNet) from None

    def _build(self, preset: str, num_classes: int, in_channels: int, block: str | None, layers: list[int] | None,
               widths: list[int] | None, stem: str | None, zero_init_residual: bool, norm: NormSpec,
               placement: Placement, base_norm: NormSpec, rules: Rules | None, alpha_init: float | None,
               alpha_rule: AlphaRule, recipe: str | None, weight_standardization: bool | None,
               branch_gain: float | None, nf_alpha: float | None, agc: float | None) -> None:
        """Build the layers from the resolved arguments (the recipe's options written in)."""
        standardized = check_flag("ResNet weight_standardization", weight_standardization)
        branch_gain = check_finite("ResNet branch_gain", branch_gain)
        nf_alpha = check_positive("ResNet nf_alpha", nf_alpha)
        self.agc = check_positive("ResNet agc (the clipping lambda)", agc)  # a training option, kept here
        p = RESNET_PRESETS[preset]
        block, stem = pick(block, p.block), pick(stem, p.stem)
        layers, widths = list(pick(layers, p.layers)), list(pick(widths, p.widths))
        if block not in ("basic", "bottleneck"):
            raise ConfigError(f"unknown ResNet block '{block}'; valid: basic, bottleneck")
        if stem not in ("imagenet", "cifar"):
            raise ConfigError(f"unknown ResNet stem '{stem}'; valid: imagenet, cifar")
        if not layers or len(layers) != len(widths) or len(layers) > 4:
            raise ConfigError(f"ResNet layers {layers} and widths {widths} must be lists of the same length, 1 to 4")
        for name, value in [("num_classes", num_classes), ("in_channels", in_channels)] + [
            (f"layers[{i}]", v) for i, v in enumerate(layers)] + [(f"widths[{i}]", v) for i, v in enumerate(widths)]:
            check_int(f"ResNet {name}", value)

        self.placement = NormPlacement("ResNet", resnet_site_presets(block), norm, placement,
                                       base_norm, rules, alpha_init)
        block_cls = BasicBlock if block == "basic" else Bottleneck
        conv = functools.partial(_conv, standardized=standardized)
        self.stem = Stem(in_channels, widths[0], stem, self.placement, conv)
        c_in, input_std = widths[0], 1.0  # NF: the stem's output counts as unit std
        for s, (num_blocks, width) in enumerate(zip(layers, widths), start=1):
            blocks = []
            for b in range(num_blocks):
                stride = 2 if s > 1 and b == 0 else 1
                scale = None if nf_alpha is None and branch_gain is None else BranchScale(nf_alpha or 1.0, branch_gain)
                blocks.append(block_cls(f"layer{s}.{b}", c_in, width, stride, self.placement, conv,
                                        input_std, scale))
                if nf_alpha is not None:
                    input_std = nf_next_std(input_std, blocks[-1].downsample is not None, nf_alpha)
                c_in = width * block_cls.expansion
            self.add_module(f"layer{s}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.blocks_per_stage = layers
        self.head = nn.Linear(c_in, num_classes)
        self.placement.check_all_matched()
        self._init_weights(zero_init_residual)
        self.alpha_rule = apply_alpha_rule(self, alpha_rule, self.site_depths())

    def site_depths(self) -> dict[str, int]:
        """Site -> k, the 1-based index of its residual block over all stages; the stem's site is 1.

        The stem's output is the stream the first block reads, so both share k = 1 (alpha_rule depth).
        """
        first = [1 + sum(self.blocks_per_stage[:s]) for s in range(len(self.blocks_per_stage))]  # per stage
        depths = {}
        for site in self.norm_sites():
            stage, block = site.split(".")[:2]  # 'layer2.1.norm1' -> 'layer2', '1'; 'stem.norm' -> stem
            depths[site] = 1 if stage == "stem" else first[int(stage[len("layer"):]) - 1] + int(block)
        return depths

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResidualBlock) and getattr(m.last_norm(), "weight", None) is not None:
                    nn.init.zeros_(m.last_norm().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``."""
        x = self.stem(x)
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.head(x.mean(dim=(2, 3)))  # global average pool: (N, C, H, W) -> (N, C)
