"""The one way to build a norm: a name -> builder map, as timm's ``create_norm`` does it.

A *spec* is what users write in YAML: a name (``"dyt"``), or a mapping with options
(``{"name": "dyt", "alpha_init": 1.0}``). Python callers may also pass a class or any callable
``num_features -> nn.Module``. A *layout* is ``"channels_last"`` (tokens ``(..., C)``) or
``"channels_first"`` (feature maps ``(N, C, *spatial)``). Every (norm x layout) pair either
builds or raises a one-line ``NormError`` naming the pair and the valid choices. ``choices_of`` and
``named_points`` say which option values a norm takes and what some of its points are called, so a
study report reads them here rather than spelling them itself.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from torch import nn

from dyt_lab.errors import ConfigError
from dyt_lab.norms import baselines, dyt, factored, functional
from dyt_lab.norms.options import check_num_features

NormSpec = str | dict[str, Any]
Layout = Literal["channels_last", "channels_first"]
LAYOUTS: tuple[str, ...] = ("channels_last", "channels_first")
NormFactory = Callable[[int], nn.Module]


class NormError(ConfigError):
    """A norm spec, option or layout that cannot be built; the message is one line."""


@dataclass(frozen=True)
class NormEntry:
    """A registry row: how to build one norm, in which layouts, and what it computes."""

    name: str
    build: Callable[..., nn.Module]  # (num_features, layout, **options) -> module
    layouts: tuple[str, ...]
    formula: str
    params: str
    aliases: tuple[str, ...] = ()
    layer: type | None = None  # dyt_lab's own class, built with the options its constructor takes

    def options(self) -> list[str]:
        """The keyword options this norm accepts besides ``num_features`` and the layout."""
        skip = {"self", "num_features", "layout", "channels_last"}
        sig = inspect.signature(self.layer or self.build)
        return [p for p in sig.parameters if p not in skip and not p.startswith("_")]

    def choices(self) -> dict[str, tuple[str, ...]]:
        """Each option that takes one of fixed values (a ``Literal`` hint), with its values in order."""
        hints = get_type_hints(self.layer.__init__ if self.layer else self.build)
        return {o: get_args(hints[o]) for o in self.options() if get_origin(hints.get(o)) is Literal}


def _layernorm(num_features: int, layout: str, eps: float = 1e-6, affine: bool = True) -> nn.Module:
    if layout == "channels_last":
        return nn.LayerNorm(num_features, eps=eps, elementwise_affine=affine)
    return baselines.LayerNorm2d(num_features, eps=eps, affine=affine)


def _batchnorm(num_features: int, layout: str, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True):
    cls = baselines.TokenBatchNorm if layout == "channels_last" else nn.BatchNorm2d
    return cls(num_features, eps=eps, momentum=momentum, affine=affine)


def _rmsnorm(num_features: int, layout: str, eps: float | None = None, affine: bool = True) -> nn.Module:
    if layout == "channels_last":
        return nn.RMSNorm(num_features, eps=eps, elementwise_affine=affine)
    return baselines.RMSNorm2d(num_features, eps=eps, affine=affine)


def _groupnorm(num_features: int, layout: str, num_groups: int = 32, eps: float = 1e-5, affine: bool = True):
    return baselines.GroupNorm(num_features, num_groups=num_groups, eps=eps, affine=affine)


def _identity(num_features: int, layout: str) -> nn.Module:
    return baselines.Identity(num_features)


def _layer(num_features: int, layout: str, cls: type, **options: Any) -> nn.Module:
    return cls(num_features, channels_last=layout == "channels_last", **options)


def _squash_entry(name: str, cls: type, formula: str | None = None, params: str | None = None) -> NormEntry:
    """A row of the DyT family or factored; a preset's formula and parameters are read from its preset."""
    formula = formula or dyt.preset_formula(cls.preset)
    params = params or dyt.preset_params(cls.preset)
    return NormEntry(name, functools.partial(_layer, cls=cls), LAYOUTS, formula, params, layer=cls)


_BOTH = LAYOUTS
_ENTRIES = [
    NormEntry("layernorm", _layernorm, _BOTH, "w * (x - mean_C) / sqrt(var_C + eps) + b", "w, b: (C,)", ("ln",)),
    NormEntry("batchnorm", _batchnorm, _BOTH, "w * (x - mean_batch) / sqrt(var_batch + eps) + b",
              "w, b: (C,); running mean/var", ("bn",)),
    NormEntry("rmsnorm", _rmsnorm, _BOTH, "w * x / sqrt(mean_C(x^2) + eps)", "w: (C,)", ("rms",)),
    NormEntry("groupnorm", _groupnorm, ("channels_first",), "w * (x - mean_group) / sqrt(var_group + eps) + b",
              "w, b: (C,)", ("gn",)),
    NormEntry("identity", _identity, _BOTH, "x", "none", ("none",), layer=baselines.Identity),
    _squash_entry("dyt", dyt.DyT),
    _squash_entry("dyt_shift", dyt.ShiftedDyT),
    _squash_entry("dyt_channel_shift", dyt.ChannelShiftDyT),
    _squash_entry("dyt_channel_alpha", dyt.ChannelAlphaDyT),
    _squash_entry("derf", dyt.Derf),
    _squash_entry("dyt_centered", dyt.CenteredDyT),
    _squash_entry("factored", factored.FactoredNorm,
                  "w * squash(s * (x - m)) + b; m: batch/running mean or 0; s: 1/std, 1/running std, a, a_c or 1",
                  "w, b: (C,); a: scalar or (C,) if scale is alpha*; running mean/var where used"),
    # the family with each part an option: every squash of functional.SQUASHES, named from that one list
    # (`dyt-lab norms` gives their formulas); center 'sample' is batch-free but not point-wise
    _squash_entry("dyt_general", dyt.PointwiseNorm,
                  f"w * squash(a * (x - m) + s) + b; squash: {', '.join(functional.SQUASHES)}; "
                  "m: 0, each sample's mean over H, W, or the batch mean",
                  "a: scalar or (C,); s: none, scalar or (C,); w, b: (C,); running mean if center is batch"),
]
NORMS: dict[str, NormEntry] = {e.name: e for e in _ENTRIES}
_ALIASES: dict[str, str] = {alias: e.name for e in _ENTRIES for alias in e.aliases}
# The one type table, in two parts. Standard norm classes by kind, subclasses included (dyt_lab's
# LayerNorm2d, timm's and torchvision's are nn.LayerNorm subclasses): the kinds convert_norms replaces
# in any model, and what a site of them is called. torch's BatchNorm classes are listed because their
# common base, _BatchNorm, is private; lazy and token variants subclass these.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
STANDARD_KINDS: dict[str, tuple[type, ...]] = {
    "layernorm": (nn.LayerNorm,), "batchnorm": BATCH_NORMS, "groupnorm": (nn.GroupNorm,), "rmsnorm": (nn.RMSNorm,),
}
# Familiar names of some points of a norm's choices, keyed by their values in choices_of's order.
_NAMED_POINTS: dict[str, dict[tuple[str, ...], str]] = {"factored": factored.NAMED_POINTS}
# dyt_lab's own classes that are no standard norm, by registry name (exact types: CenteredDyT is a DyT).
_TYPE_NAMES: dict[type, str] = {e.layer: e.name for e in _ENTRIES if e.layer is not None}


def available_norms() -> list[str]:
    """The registry names, in table order (aliases: ln, bn, rms, gn, none)."""
    return list(NORMS)


def choices_of(name: str) -> dict[str, tuple[str, ...]]:
    """The options of a norm that take one of fixed values, each with its values in order, e.g.
    ``choices_of("factored")["center"] == ("none", "batch")``: what a report reads a factored cell by."""
    return get_entry(name).choices()


def named_points(name: str) -> dict[tuple[str, ...], str]:
    """Familiar names of some points of a norm, keyed by their values of ``choices_of(name)`` in its order:
    ``named_points("factored")[("batch", "batch_std", "none")] == "BatchNorm"``; ``{}`` for most norms."""
    return dict(_NAMED_POINTS.get(get_entry(name).name, {}))


def get_entry(name: str) -> NormEntry:
    """The registry entry for a name or alias (case-insensitive), or a NormError listing the names."""
    if not isinstance(name, str):
        raise NormError(f"a norm name must be a string, got {name!r}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in NORMS:
        close = difflib.get_close_matches(key, list(NORMS) + list(_ALIASES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise NormError(f"unknown norm '{name}'{hint}; valid names: {', '.join(NORMS)}")
    return NORMS[key]


def check_layout(layout: str) -> str:
    """Return ``layout`` if valid, else a NormError listing the two layouts."""
    if layout not in LAYOUTS:
        raise NormError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    return layout


def _split_spec(spec: NormSpec) -> tuple[NormEntry, dict[str, Any]]:
    """A name or ``{"name": ..., **options}`` -> (entry, options), options checked by name."""
    if isinstance(spec, Mapping):
        options = dict(spec)
        if "name" not in options:
            raise NormError(f"a norm mapping needs a 'name' key, e.g. {{'name': 'dyt'}}; got {dict(spec)!r}")
        entry = get_entry(options.pop("name"))
    else:
        entry, options = get_entry(spec), {}
    valid = entry.options()
    for key in options:
        if key not in valid:
            raise NormError(f"unknown option '{key}' for norm '{entry.name}'; valid options: "
                            f"{', '.join(valid) if valid else '(none)'}")
    return entry, options


def build_norm(spec: NormSpec | type | Callable[[int], nn.Module], num_features: int, layout: Layout) -> nn.Module:
    """Build one norm layer for ``num_features`` channels in ``layout`` from any kind of spec."""
    check_layout(layout)
    try:
        check_num_features(num_features)
    except ValueError as err:
        raise NormError(str(err)) from None
    if isinstance(spec, type) and issubclass(spec, (dyt.DynamicSquash, factored.FactoredNorm)):
        return spec(num_features, channels_last=layout == "channels_last")  # a registry class follows layout
    if callable(spec) and not isinstance(spec, (str, Mapping)):
        return spec(num_features)  # a user's class or factory: the timm/torchvision contract
    entry, options = _split_spec(spec)
    if layout not in entry.layouts:
        raise NormError(f"norm '{entry.name}' does not support layout '{layout}'; "
                        f"it supports: {', '.join(entry.layouts)}")
    try:
        return entry.build(num_features, layout, **options)
    except (ValueError, TypeError) as err:
        raise NormError(f"norm '{entry.name}' with options {options}: {err}") from None


def norm_factory(spec: NormSpec | type | Callable[[int], nn.Module], layout: Layout) -> NormFactory:
    """A ``num_features -> nn.Module`` factory for ``layout``, checked now rather than at first use."""
    build_norm(spec, 8, layout)  # fail fast on a bad name, option, layout or value
    return functools.partial(build_norm, spec, layout=layout)


def norm_kind(module: nn.Module) -> str | None:
    """The standard kind of a module (``layernorm`` for any nn.LayerNorm subclass, ...), or None."""
    return next((kind for kind, classes in STANDARD_KINDS.items() if isinstance(module, classes)), None)


def norm_name(module: nn.Module) -> str:
    """The registry name of a norm module (its kind for standard ones), or its class name if it has none."""
    return _TYPE_NAMES.get(type(module)) or norm_kind(module) or type(module).__name__
