"""alpha0 rules: how each DyT-family site's starting alpha is chosen.

- ``constant``: every site starts at its spec's ``alpha_init`` (the paper's recipe; the default).
- ``depth``: alpha0 = alpha_init / sqrt(k), k the site's depth index (``site_depths()`` of the model).
- ``data``: alpha = alpha_init / std(the site's input) on the first training batch, so alpha_init is
  the std the squash's argument starts with at every site. The model only records the rule; the
  trainer calls ``calibrate_alpha`` once, before the first step of a fresh run.

Why ``depth`` is 1/sqrt(k): in a residual stream ``x_k = x_{k-1} + f_k(x_{k-1})`` whose branches
add roughly independent, equal variance at init, Var(x_k) grows like k, so std(x_k) ~ sqrt(k). The
paper reports that alpha tracks 1/std of its input, so alpha0 ~ 1/sqrt(k) keeps alpha0 * std about
constant down the network. The law is applied to every site of a block alike (one number per block,
easy to state and to contrast with ``data``, which measures each site), although in a ResNet only
``norm1`` and the downsample read the stream itself; the others read a branch an upstream norm has
already bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import nn

from dyt_lab.errors import ConfigError
from dyt_lab.norms import DYT_FAMILY

AlphaRule = Literal["constant", "depth", "data"]
ALPHA_RULES: tuple[str, ...] = ("constant", "depth", "data")
RULE_TEXT = {
    "depth": "alpha0 = alpha_init / sqrt(k), k the 1-based index of the site's residual block (the norm column "
             "shows each site's alpha0)",
    "data": "alpha = alpha_init / std(site input) on the first training batch (the norm column's alpha_init is "
            "the target std of the squash's argument)",
}
MIN_STD = 1e-6  # below this a site's input is dead (all equal): its alpha is left as it is, not set to ~inf


def dyt_sites(model: nn.Module) -> dict[str, nn.Module]:
    """Site -> module for the DyT-family sites of a model with ``norm_sites()``, in forward order."""
    modules = {site: model.get_submodule(site) for site in model.norm_sites()}
    return {site: m for site, m in modules.items() if isinstance(m, DYT_FAMILY)}


def check_alpha_rule(rule: object, model: nn.Module) -> str:
    """Return ``rule`` if it is known and has a DyT-family site to act on, else raise a one-line ConfigError."""
    if rule not in ALPHA_RULES:
        raise ConfigError(f"unknown alpha_rule {rule!r}; valid choices: {', '.join(ALPHA_RULES)}")
    if rule != "constant" and not dyt_sites(model):
        raise ConfigError(f"alpha_rule '{rule}' needs a DyT-family norm at some site; none of this model's sites "
                          "has one: set --model.norm dyt (or another DyT variant) or use alpha_rule constant")
    return rule


def set_alpha(module: nn.Module, alpha: torch.Tensor) -> None:
    """Overwrite a DyT-family site's alpha in place, broadcast to its shape ((1,) or (C,)), keeping the Parameter."""
    with torch.no_grad():
        module.alpha.copy_(alpha.to(module.alpha).expand_as(module.alpha))


def scale_alpha_by_depth(model: nn.Module, site_depths: Mapping[str, int]) -> None:
    """``depth`` rule: each DyT-family site's alpha_init and alpha become alpha_init / sqrt(k)."""
    for site, module in dyt_sites(model).items():
        module.alpha_init = module.alpha_init / math.sqrt(site_depths[site])
        set_alpha(module, torch.tensor(module.alpha_init))


def apply_alpha_rule(model: nn.Module, rule: object, site_depths: Mapping[str, int]) -> str:
    """Check ``rule`` and apply what a model applies at build time (only ``depth`` changes anything now).

    Each DyT-family site also records a non-constant rule as ``alpha_rule``, so a site table built
    from the modules alone (``format_placement`` through any wrapper) can say which rule set alpha.
    """
    rule = check_alpha_rule(rule, model)
    if rule == "depth":
        scale_alpha_by_depth(model, site_depths)
    if rule != "constant":
        for module in dyt_sites(model).values():
            module.alpha_rule = rule
    return rule


def input_std(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The std of what a site's alpha multiplies: shape (1,) for a scalar alpha, (C,) for a per-channel one.

    That is the site's input, centered first for ``dyt_centered`` (its ``squash_input``). Population
    std (no Bessel correction), in float32 whatever the input's dtype.
    """
    z = module.squash_input(x).detach().float()
    if module.alpha.numel() == 1:
        return z.std(correction=0).reshape(1)
    channel_dim = z.dim() - 1 if module.channels_last else 1  # tokens (..., C) or maps (N, C, H, W)
    return z.std(dim=[d for d in range(z.dim()) if d != channel_dim], correction=0)  # (C,)


def _rng_devices(x: torch.Tensor) -> list[int]:
    if not x.is_cuda:
        return []
    return [x.device.index if x.device.index is not None else torch.cuda.current_device()]


@torch.no_grad()
def calibrate_alpha(model: nn.Module, x: torch.Tensor,
                    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``data`` rule: set every DyT-family site's alpha to alpha_init / std(its input) in one forward pass of ``x``.

    This is LSUV's idea (Mishkin & Matas 2016, "All you need is a good init"): one pass in forward
    order, where a pre-hook sets each site's alpha from its own input just before the site runs, so
    every site downstream sees the upstream sites already calibrated. ``reduce`` (e.g. the mean over
    DDP ranks) is applied to each measured std before it is used, so all ranks set the same alpha.
    The pass runs in the model's current mode (training: BatchNorm sites use batch statistics, as
    the first step will) and leaves no other trace: every buffer (running statistics, counters) is
    restored afterwards and the random state is forked, so dropout draws are not consumed.
    Returns site -> the std used, shaped like that site's alpha.
    """
    sites = dyt_sites(model)
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    stds: dict[str, torch.Tensor] = {}

    def pre_hook(site: str):
        def hook(module: nn.Module, args: tuple) -> None:
            std = input_std(module, args[0])
            stds[site] = std = reduce(std) if reduce is not None else std
            alpha = torch.where(std > MIN_STD, module.alpha_init / std.clamp_min(MIN_STD), module.alpha.float())
            set_alpha(module, alpha)
        return hook

    handles = [module.register_forward_pre_hook(pre_hook(site)) for site, module in sites.items()]
    try:
        with torch.random.fork_rng(devices=_rng_devices(x)):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    return stds
