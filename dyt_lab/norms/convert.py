"""Swap the norm layers of any ``nn.Module`` (timm, torchvision, yours) for a registry norm."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from dyt_lab.norms import baselines
from dyt_lab.norms import sites as site_patterns
from dyt_lab.norms.registry import STANDARD_KINDS, NormError, NormSpec, build_norm, norm_kind

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
    found = [(name, m, norm_layout(m, kinds)) for name, m in model.named_modules() if name]
    found = [(name, m, layout) for name, m, layout in found if layout is not None]
    if sites is not None:
        found = [item for item in found if site_patterns.matches(item[0], sites)]
    if not found:
        where = f" at sites {list(sites)}" if sites is not None else ""
        raise NormError(f"convert_norms found no {'/'.join(kinds)} module{where} in {type(model).__name__}; "
                        f"nothing to replace (valid kinds: {', '.join(KINDS)})")
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
