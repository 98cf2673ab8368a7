"""The probe pass: one forward of a fixed batch with forward hooks on the norm sites, removed right after.

Hooks exist only inside ``run_probe``; training steps never run with one installed. The pass runs
under ``no_grad`` in eval mode, so dropout is off and sites that keep running statistics (BatchNorm,
batch-centred DyT) use them, as they do at validation. ``batch_stats=True`` instead lets those sites normalize the
probe batch with its own statistics, as they do in a training step; their buffers are restored
afterwards, so the probe never changes the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from dyt_lab.diagnostics.stats import SiteStats, as_rows, pre_affine, site_stats
from dyt_lab.errors import ConfigError

SAMPLE_SEED = 0  # the same input elements are plotted at every probe, so epochs compare point for point


@dataclass
class SiteProbe:
    """One site on the probe batch: its statistics and a fixed sample of (input, pre-affine output) points."""

    stats: SiteStats
    x: torch.Tensor  # (P,) input values
    y: torch.Tensor  # (P,) output before the affine
    channel: torch.Tensor  # (P,) channel index of each point


def probe_images(loader: Iterable, size: int) -> torch.Tensor:
    """The first ``size`` images of a fixed-order loader (the validation set): the same images every time."""
    images, count = [], 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        images.append(x)
        count += len(x)
        if count >= size:
            break
    if not images:
        raise ConfigError("the validation set is empty: the diagnostics have no probe batch")
    return torch.cat(images)[:size]


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether ``module`` itself (not its children) keeps running statistics of the batches it saw."""
    return any(name.startswith("running_") for name, _ in module.named_buffers(recurse=False))


@contextlib.contextmanager
def probe_mode(net: nn.Module, batch_stats: bool = False) -> Iterator[None]:
    """Eval mode for one pass (BN-like sites in train mode if ``batch_stats``); modes and buffers restored after."""
    modes = {module: module.training for module in net.modules()}
    # SyncBatchNorm stays in eval mode: in train mode it would wait for the other processes, which do not probe.
    # A site that normalises by the batch in train mode keeps running statistics for eval (BatchNorm, DyT of
    # the batch-centred input, factored's batch points): its own running_* buffers tell it apart.
    batch_like = [m for m in net.modules() if uses_batch_statistics(m)
                  and not isinstance(m, nn.SyncBatchNorm)] if batch_stats else []
    saved = {m: [b.clone() for b in m.buffers(recurse=False)] for m in batch_like}  # running stats, counters
    net.eval()
    for module in batch_like:
        module.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for module, tensors in saved.items():
                for buffer, tensor in zip(module.buffers(recurse=False), tensors):
                    buffer.copy_(tensor)
        for module, mode in modes.items():
            module.training = mode


@contextlib.contextmanager
def site_hooks(net: nn.Module, sites: Iterable[str], hook: Callable) -> Iterator[None]:
    """Forward hooks ``hook(site, module, inputs, output)`` on ``sites`` for the block only; always removed."""
    handles = []
    try:
        for site in sites:
            handles.append(net.get_submodule(site).register_forward_hook(partial(hook, site)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _sample(numel: int, max_points: int, device: torch.device) -> torch.Tensor:
    """``min(numel, max_points)`` flat indices, the same ones for the same ``numel``."""
    if numel <= max_points:
        return torch.arange(numel, device=device)
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    return torch.randint(numel, (max_points,), generator=generator).to(device)


def run_probe(
    net: nn.Module,
    images: torch.Tensor,
    sites: dict[str, str],
    max_points: int = 2000,
    batch_stats: bool = False,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, SiteProbe]:
    """Run ``images`` through ``net`` once and return each site's statistics and sampled points.

    ``sites`` maps site names to layouts (``dyt_lab.models.sites_of``); ``forward_context`` is, in training,
    the precision plugin's autocast, so sites see the dtype they see in a training step.
    """
    results: dict[str, SiteProbe] = {}

    def record(site: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        rows = as_rows(x, sites[site])  # (M, C)
        result = pre_affine(module, x, rows, output, sites[site])
        idx = _sample(rows.numel(), max_points, rows.device)  # (P,) into the flat (M * C) rows
        results[site] = SiteProbe(site_stats(site, module, rows, result), rows.flatten()[idx].cpu(),
                                  result.value_at(idx).cpu(), (idx % rows.shape[1]).cpu())

    with probe_mode(net, batch_stats), torch.no_grad(), site_hooks(net, sites, record), forward_context():
        net(images)
    return {site: results[site] for site in sites if site in results}  # forward order
