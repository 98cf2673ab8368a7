"""Which norm goes at which named site: rules, presets, and the table that shows the result.

A model's norm sites have stable dotted names (``blocks.3.norm1``, ``layer2.0.downsample.norm``).
``NormPlacement`` picks the spec for each site in this order:

1. ``rules``: ordered ``pattern -> spec`` pairs, written as one mapping ``{pattern: spec, ...}`` (in
   the mapping's order) or as a list of one-key mappings ``[{pattern: spec}, ...]``; the first rule
   whose pattern matches wins.
2. ``placement``: the sites selected by these patterns get ``norm``.
3. every other site gets ``base_norm`` (the family's own norm: LayerNorm for ViT, BatchNorm for ResNet).

A pattern is a preset name (``attn``, ``stage3``...) or a glob over site names (``layer4.*``).
A rule or placement pattern that matches no site is an error, never a silent no-op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from dyt_lab.errors import ConfigError
from dyt_lab.models.alpha_rules import RULE_TEXT
from dyt_lab.models.batch_free import BranchScale, ScaledStdConv2d
from dyt_lab.models.recipes import RECIPE_LR, flow
from dyt_lab.norms import DYT_FAMILY, FactoredNorm, NormSpec, PointwiseNorm, build_norm, norm_name
from dyt_lab.norms import sites as site_patterns
from dyt_lab.norms.convert import find_norm_sites, with_alpha_init

Placement = str | list[str]
# Mapping first: jsonargparse tries a Union's types in order, and a YAML mapping keeps its key order.
Rules = dict[str, NormSpec] | list[dict[str, NormSpec]]


class PlacementError(ConfigError):
    """A rule, preset or pattern that does not fit the model's sites."""


def rule_pairs(rules: Rules | None) -> list[tuple[object, NormSpec]]:
    """``{p1: s1, p2: s2}`` or ``[{p1: s1}, {p2: s2}]`` -> ``[(p1, s1), (p2, s2)]``, in the order written."""
    if rules is None:
        return []
    if isinstance(rules, Mapping):
        return list(rules.items())
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise PlacementError(f"placement rules are a mapping {{pattern: norm, ...}} or a list of one-key "
                             f"mappings [{{pattern: norm}}, ...], got {rules!r}")
    pairs = []
    for rule in rules:
        if not isinstance(rule, Mapping) or len(rule) != 1:
            raise PlacementError(f"a placement rule is a one-key mapping {{pattern: norm}}, got {rule!r}")
        pairs += rule.items()
    return pairs


class NormPlacement:
    """Resolves site names to norm specs and builds the norms, remembering each site's layout."""

    def __init__(
        self,
        family: str,
        presets: Mapping[str, Sequence[str]],
        norm: NormSpec,
        placement: Placement = "all",
        base_norm: NormSpec = "layernorm",
        rules: Rules | None = None,
        alpha_init: float | None = None,
    ) -> None:
        self.family = family
        self.presets = dict(presets)
        self.norm = with_alpha_init(norm, alpha_init)
        self.base_norm = with_alpha_init(base_norm, alpha_init)
        self.placement_names = site_patterns.as_patterns(placement)
        for key in self.placement_names:
            self._check_pattern(key)
        self.rules: list[tuple[str, NormSpec]] = []  # (preset or glob, spec)
        for key, spec in rule_pairs(rules):
            self._check_pattern(key)
            self.rules.append((key, with_alpha_init(spec, alpha_init)))
        self.sites: dict[str, str] = {}  # site -> layout, in build order
        self._matched: set[str] = set()

    @staticmethod
    def _check_pattern(key: str) -> None:
        if not isinstance(key, str) or not key:
            raise PlacementError(f"a placement pattern must be a non-empty string, got {key!r}")

    def spec_for(self, site: str) -> NormSpec:
        """The spec this site gets: first matching rule, else ``norm`` if placed, else ``base_norm``."""
        for key, spec in self.rules:
            if site_patterns.matches(site, key, self.presets):
                self._matched.add(key)
                return spec
        chosen = self.base_norm
        for name in self.placement_names:
            if site_patterns.matches(site, name, self.presets):
                self._matched.add(name)
                chosen = self.norm
        return chosen

    def build(self, site: str, num_features: int, layout: str) -> nn.Module:
        """Build the norm for one site; models call this once per site, in order."""
        self.sites[site] = layout
        return build_norm(self.spec_for(site), num_features, layout)

    def check_all_matched(self) -> None:
        """Raise if a rule or placement pattern matched none of the sites that were built, naming the argument
        that holds it and the presets that select sites of this model (resnet_tiny has no stage4)."""
        rules = [k for k, _ in self.rules]
        for key in rules + self.placement_names:
            if key not in self._matched:
                examples = ", ".join(list(self.sites)[:3])
                presets = ", ".join(p for p in self.presets if site_patterns.select(self.sites, p, self.presets))
                if key in rules:
                    raise PlacementError(f"--model.rules '{key}': neither a preset of this {self.family} nor a "
                                         f"pattern matching a site; its presets: {presets}; sites look like: "
                                         f"{examples}, ...")
                raise PlacementError(f"placement '{key}' is neither a {self.family} preset nor a pattern "
                                     f"matching a site; presets: {presets}; sites look like: {examples}, ...")


class NormSitesMixin:
    """Gives a model ``norm_sites()``; the model sets ``self.placement`` while it builds."""

    placement: NormPlacement

    def norm_sites(self) -> dict[str, str]:
        """Site name -> layout (``channels_last`` or ``channels_first``), in forward order."""
        return dict(self.placement.sites)


def sites_of(net: nn.Module) -> dict[str, str]:
    """Site name -> layout of every norm site of any network, in forward order.

    dyt_lab's models name their sites (``norm_sites()``, identity sites included); any other network
    (timm, torchvision) has the registry's norm kinds and the DyT family found by scanning its modules.
    """
    return dict(net.norm_sites()) if hasattr(net, "norm_sites") else find_norm_sites(net)


# Options (-> the attribute holding each, and its plain value) a label shows where they differ from it:
# dyt_general's are DyT's, factored's are BatchNorm's.
SHOWN_OPTIONS = {
    PointwiseNorm: {"squash": ("squash", "tanh"), "alpha": ("alpha_shape", "scalar"),
                    "shift": ("shift_shape", None), "center": ("center", "none")},
    FactoredNorm: {"center": ("center", "batch"), "scale": ("scale", "batch_std"), "squash": ("squash", "none")},
}


def norm_options(module: nn.Module) -> dict[str, object]:
    """What a built norm's label shows besides its name: alpha0 where it has an alpha, and each option that
    makes it other than its name's plain layer (a dyt_general's centring and shift, a factored point)."""
    has_alpha = isinstance(module, DYT_FAMILY) or (isinstance(module, FactoredNorm) and module.alpha is not None)
    options: dict[str, object] = {"alpha_init": f"{module.alpha_init:g}"} if has_alpha else {}
    for kind, shown in SHOWN_OPTIONS.items():
        if isinstance(module, kind):
            options.update({option: getattr(module, attribute) for option, (attribute, plain) in shown.items()
                            if getattr(module, attribute) != plain})
    return options


def describe_norm(module: nn.Module) -> str:
    """A short label for a built norm: ``layernorm``, ``dyt(alpha_init=0.5)``,
    ``dyt_general(alpha_init=0.16, shift=scalar, center=sample)``."""
    options = norm_options(module)
    rest = ", ".join(f"{key}={value}" for key, value in options.items())
    return f"{norm_name(module)}({rest})" if options else norm_name(module)


def describe_placement(model: nn.Module) -> dict[str, str]:
    """Site -> norm label for a model with ``norm_sites()``, read from the modules actually there."""
    return {site: describe_norm(model.get_submodule(site)) for site in model.norm_sites()}


def design_lines(net: nn.Module) -> list[str]:
    """What the network does besides its norms, read from its modules: weight standardisation, branch
    gains and NF scaling, and the recipe it was built with (and the recipe's options set otherwise)."""
    modules = list(net.modules())
    lines = []
    if any(isinstance(m, ScaledStdConv2d) for m in modules):
        lines.append("convs: scaled weight standardisation, W = gain * (W - mean) / (std * sqrt(fan_in)), "
                     "gain learnable from 1")
    scale = next((m for m in modules if isinstance(m, BranchScale)), None)  # every block's is alike
    if scale is not None:
        parts = [f"NF scaling (alpha {scale.alpha:g}, input / its expected std)"] if scale.alpha != 1.0 else []
        parts += ["a learnable scalar gain at the end (SkipInit)"] if scale.gain is not None else []
        lines.append(f"residual branches: {', '.join(parts)}")
    recipe = getattr(net, "recipe", None)
    if recipe is not None:
        found = f" (found at lr {RECIPE_LR[recipe]:g}; the optimizer is the config's)" if recipe in RECIPE_LR else ""
        kept = getattr(net, "recipe_overrides", {})
        instead = "; the config's own: " + ", ".join(f"{key} {flow(used)} (recipe: {flow(theirs)})"
                                                     for key, (used, theirs) in kept.items())
        lines.append(f"recipe: {recipe}{found}{instead if kept else ''}")
    return lines


def format_placement(model: nn.Module) -> str:
    """The site -> norm table as aligned text, one site a line, then what else the network does (``design_lines``)
    and the alpha0 rule unless it is constant."""
    table = describe_placement(model)
    layouts = model.norm_sites()
    width = max(len(site) for site in table)
    lines = [f"{'site':<{width}}  {'layout':<14}  norm", f"{'-' * width}  {'-' * 14}  {'-' * 20}"]
    lines += [f"{site:<{width}}  {layouts[site]:<14}  {label}" for site, label in table.items()]
    lines += design_lines(model.get_submodule(""))  # "": the network itself, through any wrapper
    # the rule is read from the sites (apply_alpha_rule tags them): a constant rule's table is what it always was
    rules = dict.fromkeys(getattr(model.get_submodule(site), "alpha_rule", None) for site in table)
    lines += [f"alpha0 rule: {rule}: {RULE_TEXT[rule]}" for rule in rules if rule is not None]
    return "\n".join(lines)
