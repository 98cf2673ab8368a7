"""Swap the norm layers of any ``nn.Module`` (timm, torchvision, yours) for a registry norm."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dyt_lab.norms import baselines
from dyt_lab.norms import sites as site_patterns
from dyt_lab.norms.dyt import DYT_FAMILY
from dyt_lab.norms.registry import STANDARD_KINDS, NormError, NormSpec, build_norm, get_entry, norm_kind

KINDS = tuple(STANDARD_KINDS)


def norm_layout(module: nn.Module, kinds: Iterable[str]) -> str | None:
    """The layout a norm module of one of ``kinds`` works in, or None if it is not such a module.

    Channels-first LayerNorm subclasses (timm's and torchvision's ``LayerNorm2d``) keep
    ``nn.LayerNorm``'s state but permute; they are recognised by the conventional ``2d`` suffix.
    """
    kind = norm_kind(module)
    if kind is None or kind not in kinds:
        return None
    if kind in ("layernorm", "rmsnorm"):
        return "channels_first" if type(module).__name__.lower().endswith("2d") else "channels_last"
    if kind == "batchnorm":
        return "channels_last" if isinstance(module, baselines.TokenBatchNorm) else "channels_first"
    return "channels_first"  # groupnorm


def find_norm_sites(model: nn.Module) -> dict[str, str]:
    """Site name -> layout of every norm module of ``model`` (the standard kinds and the DyT family), in order."""
    sites = {}
    for name, module in model.named_modules():
        if isinstance(module, DYT_FAMILY):
            sites[name] = "channels_last" if module.channels_last else "channels_first"
        elif name and (layout := norm_layout(module, KINDS)) is not None:
            sites[name] = layout
    return sites


def site_shapes(sites: Iterable[str]) -> list[str]:
    """Site names with their numeric parts as ``*`` (``layer*.*.bn1``), once each: valid patterns, in short."""
    return list(dict.fromkeys(re.sub(r"(?<![^.])\d+(?![^.])", "*", site) for site in sites))


def _num_features(module: nn.Module, site: str) -> int:
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        if len(module.normalized_shape) != 1:
            raise NormError(f"cannot convert '{site}': it normalizes over shape {tuple(module.normalized_shape)}, "
                            "only a single channel dimension is supported")
        return module.normalized_shape[0]
    return module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features


def _device_dtype(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return None, None


def convert_norms(
    model: nn.Module,
    to: NormSpec,
    kinds: Sequence[str] = ("layernorm",),
    sites: Sequence[str] | None = None,
) -> list[str]:
    """Replace the norm modules of ``kinds`` in ``model`` with ``to``, in place; return the sites.

    Args:
        model: any module; its norms are replaced where they sit, keeping device, dtype and mode.
        to: the registry spec to build at each replaced site.
        kinds: which norms to replace, any of ``layernorm``, ``batchnorm``, ``groupnorm``, ``rmsnorm``.
        sites: optional glob patterns over dotted module names (``blocks.*.norm1``); None means all.
    """
    if isinstance(kinds, str):
        kinds = (kinds,)
    for kind in kinds:
        if kind not in KINDS:
            raise NormError(f"unknown kind '{kind}' for convert_norms; valid kinds: {', '.join(KINDS)}")
    what = "norm" if set(kinds) == set(KINDS) else "/".join(kinds)
    found = [(name, m, norm_layout(m, kinds)) for name, m in model.named_modules() if name]
    found = [(name, m, layout) for name, m, layout in found if layout is not None]
    if not found:
        present = {kind: n for kind in KINDS if (n := sum(norm_kind(m) == kind for m in model.modules()))}
        has = ", ".join(f"{kind} ({n})" for kind, n in present.items()) or "none of the kinds " + ", ".join(KINDS)
        raise NormError(f"convert_norms found no {what} module in {type(model).__name__}; "
                        f"nothing to replace; its norms: {has}")
    if sites is not None:
        # every pattern must match: one that matches nothing is a typo, never a silent no-op
        missing = site_patterns.unmatched([name for name, _, _ in found], sites)
        if missing:
            raise NormError(f"convert_norms found no {what} module at sites {missing} in "
                            f"{type(model).__name__}; its {what} sites: "
                            f"{', '.join(site_shapes(name for name, _, _ in found))}")
        found = [item for item in found if site_patterns.matches(item[0], sites)]
    replaced = []
    for name, old, layout in found:
        new = build_norm(to, _num_features(old, name), layout)
        device, dtype = _device_dtype(old)
        if device is not None:
            new = new.to(device=device, dtype=dtype)
        new.train(old.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
        replaced.append(name)
    return replaced


def with_alpha_init(spec: NormSpec, alpha_init: float | None) -> NormSpec:
    """``spec`` with ``alpha_init`` set, if it is a DyT-family spec that does not set its own; else ``spec``."""
    if alpha_init is None or not isinstance(spec, (str, Mapping)):
        return spec
    name = spec if isinstance(spec, str) else spec.get("name")
    if not isinstance(name, str) or "alpha_init" not in get_entry(name).options():  # build_norm says what is wrong
        return spec
    return {"name": name, "alpha_init": alpha_init} if isinstance(spec, str) else {"alpha_init": alpha_init, **spec}


@dataclass
class NormConversion:
    """Which norms of a built network to swap for a registry norm (``--model.convert``).

    Args:
        to: the registry norm to put in, a name (dyt) or a mapping ({name: dyt, alpha_init: 0.2}).
        kinds: the kinds of norm to replace: layernorm, batchnorm, groupnorm, rmsnorm (None: all of them).
        sites: glob patterns over the network's module names, e.g. [layer4.*] (None: every site of those kinds).
    """

    to: NormSpec
    kinds: list[str] | None = None
    sites: list[str] | None = None

    def apply(self, model: nn.Module, alpha_init: float | None = None) -> list[str]:
        """Convert ``model`` in place; ``alpha_init`` is alpha0 unless ``to`` sets its own. Returns the sites."""
        kinds = KINDS if self.kinds is None else site_patterns.as_patterns(self.kinds)
        sites = None if self.sites is None else site_patterns.as_patterns(self.sites)
        return convert_norms(model, with_alpha_init(self.to, alpha_init), kinds, sites)
