"""Which norm sites the diagnostics look at: discovery, glob filters, and subsampling for figures."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dyt_lab.errors import ConfigError
from dyt_lab.norms import sites as site_patterns
from dyt_lab.norms.convert import find_norm_sites


class SiteError(ConfigError):
    """A diagnostics site filter that matches no norm site of the model."""


def network_of(module: nn.Module) -> nn.Module:
    """The plain network inside a LightningModule (``ImageClassifier.net``), or the module itself."""
    net = getattr(module, "net", module)
    return getattr(net, "_orig_mod", net)  # torch.compile's wrapper: probe the eager module, by its own names


def find_sites(net: nn.Module) -> dict[str, str]:
    """Site name -> layout of every norm site, in forward order.

    dyt_lab models name their sites (``norm_sites()``); for any other network (timm, torchvision)
    the registry's norm types and the DyT family are found by scanning its modules.
    """
    if hasattr(net, "norm_sites"):
        return dict(net.norm_sites())
    return find_norm_sites(net)


def select_sites(sites: dict[str, str], patterns: Sequence[str] | None, strict: bool = True) -> dict[str, str]:
    """The sites matching any glob in ``patterns`` (None: all); if ``strict``, a pattern matching none is a SiteError."""
    if not sites:
        raise SiteError("the model has no norm sites to diagnose")
    for pattern in site_patterns.unmatched(sites, patterns) if strict and patterns is not None else []:
        raise SiteError(f"diagnostics site pattern '{pattern}' matches no norm site; "
                        f"valid sites: {', '.join(sites)}")
    return {site: sites[site] for site in site_patterns.select(sites, patterns)}


def spread_out(items: Sequence[str], limit: int) -> list[str]:
    """At most ``limit`` of ``items``, evenly spaced and keeping the first and the last (for figure grids)."""
    if len(items) <= limit:
        return list(items)
    if limit == 1:
        return [items[-1]]
    picks = sorted({round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)})
    return [items[i] for i in picks]
