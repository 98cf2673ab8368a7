"""Which norm sites the diagnostics look at: the network holding them, glob filters, and subsampling for figures.

A network's sites themselves are ``dyt_lab.models.sites_of(net)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dyt_lab.errors import ConfigError
from dyt_lab.norms import sites as site_patterns


class SiteError(ConfigError):
    """A diagnostics site filter that matches no norm site of the model."""


def network_of(module: nn.Module) -> nn.Module:
    """The plain network inside a LightningModule (``ImageClassifier.net``), or the module itself."""
    net = getattr(module, "net", module)
    # torch.compile's wrapper: probe the eager module, by its own site names. torch (2.14) has no public way
    # to get the module a compiled wrapper holds; Lightning's own from_compiled reads _orig_mod too.
    return getattr(net, "_orig_mod", net)


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
