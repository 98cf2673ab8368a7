"""What one norm site sees and does, as numbers: input statistics and the output before the affine.

Everything works on *rows*: a site's input reshaped to ``(M, C)``, one column per channel and one
row per position (a token of one image, or a pixel of one image), whichever the layout.

- DyT family: the output before the affine is ``squash(alpha * x + shift)`` (after CenteredDyT's
  centering); its *argument* is ``alpha * x + shift``.
- LayerNorm / RMSNorm / BatchNorm / GroupNorm: the normalized value ``(x - mean) / divisor`` with
  the layer's own statistics (BatchNorm and CenteredDyT: running estimates in eval mode, the batch's
  in train mode); its argument is that value itself, so ``saturation`` means the same thing for
  both: the share of elements a tanh would squash flat (``|argument| > 2``, where tanh > 0.96).
- ``factored`` (BatchNorm taken apart): ``scale * (x - center)``, before its squash if it has one.
- Anything else (identity, a user's own layer): its output, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dyt_lab.norms import DYT_FAMILY, FactoredNorm, norm_name
from dyt_lab.norms.functional import SQUASHES
from dyt_lab.norms.registry import BATCH_NORMS

SATURATION_LEVEL = 2.0  # tanh(2) = 0.964: beyond it the output barely moves with the input


def as_rows(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A site tensor ``(..., C)`` or ``(N, C, *spatial)`` as float rows ``(M, C)``."""
    x = x.detach().float()
    if layout == "channels_first":
        x = x.movedim(1, -1)  # (N, C, *S) -> (N, *S, C)
    return x.reshape(-1, x.shape[-1])


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclass
class PreAffine:
    """A site's output before the affine, ``squash(argument)``, and what it divided by.

    The squash is applied only to the points drawn (``value_at``): statistics need the argument alone.
    """

    argument: torch.Tensor  # (M, C): alpha * x + shift for DyT, the normalized value for norms
    squash: Callable[[torch.Tensor], torch.Tensor] = _identity  # tanh / erf for DyT, identity for norms
    divisor: torch.Tensor | None = None  # (units,): sqrt(var + eps) per channel, position or group

    def value_at(self, flat_index: torch.Tensor) -> torch.Tensor:
        """The pre-affine output at flat indices into the ``(M * C)`` rows."""
        return self.squash(self.argument.flatten()[flat_index])


def _normalized(rows: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float) -> PreAffine:
    divisor = (var + eps).sqrt()
    return PreAffine((rows - mean) / divisor, divisor=divisor.flatten())


def pre_affine(
    module: nn.Module, x: torch.Tensor, rows: torch.Tensor, output: torch.Tensor, layout: str
) -> PreAffine:
    """The output of ``module`` before its affine, from its input ``x`` in ``layout`` (``rows = as_rows(x)``)."""
    if isinstance(module, (*DYT_FAMILY, FactoredNorm)):
        # CenteredDyT and factored subtract their mean (batch or running, as the module's mode says) in
        # there too; factored also divides by its std where it has one (``divisor``), and may not squash
        z = module.squash_argument(x.detach())
        divisor = module.divisor() if isinstance(module, FactoredNorm) else None
        return PreAffine(as_rows(z, layout), SQUASHES.get(module.squash, _identity), divisor)
    if isinstance(module, nn.LayerNorm):  # per position, over channels
        var, mean = torch.var_mean(rows, dim=-1, correction=0, keepdim=True)
        return _normalized(rows, mean, var, module.eps)
    if isinstance(module, nn.RMSNorm):
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        return _normalized(rows, rows.new_zeros(()), rows.square().mean(-1, keepdim=True), eps)
    if isinstance(module, BATCH_NORMS):  # per channel, over all positions
        if module.training or module.running_mean is None:
            var, mean = torch.var_mean(rows, dim=0, correction=0)
        else:
            mean, var = module.running_mean.float(), module.running_var.float()
        return _normalized(rows, mean, var, module.eps)
    if isinstance(module, nn.GroupNorm):  # per image and group of channels: (N, G, C / G * spatial)
        groups = x.detach().float().reshape(x.shape[0], module.num_groups, -1)
        divisor = (groups.var(-1, correction=0) + module.eps).sqrt().flatten()
        value = as_rows(F.group_norm(x.detach().float(), module.num_groups, eps=module.eps), layout)
        return PreAffine(value, divisor=divisor)
    return PreAffine(as_rows(output, layout))


@dataclass
class SiteStats:
    """Statistics of one site's input on the probe batch, and of what the site does with it."""

    site: str
    kind: str  # registry name: dyt, batchnorm, layernorm, ...
    channels: int
    input_std: float  # std of all input elements
    mean_offset: float  # mean over channels of |mean_c| / input_std: what BN subtracts and DyT keeps
    channel_std_spread: float  # std over channels of std_c, divided by their mean
    max_abs: float  # largest |x|
    saturation: float  # share of elements with |argument| > 2 (see the module docstring)
    alpha: float = math.nan  # DyT family: mean alpha
    divisor: float = math.nan  # LN/BN/RMS/GN: mean of what the layer divides by, sqrt(var + eps)
    divisor_spread: float = math.nan  # std of those divisors over their mean
    scale: float = math.nan  # mean of 1 / divisor: the norm's counterpart of alpha
    channel_offsets: list[float] = field(default_factory=list, repr=False)  # |mean_c| / input_std, (C,)

    @property
    def gain(self) -> float:
        """What the site multiplies its input by before squashing: alpha (DyT) or 1 / divisor (norms)."""
        return self.alpha if not math.isnan(self.alpha) else self.scale

    def scalars(self) -> dict[str, float]:
        """The statistics worth a TensorBoard scalar, NaN ones (not applicable) left out."""
        skip = {"site", "kind", "channels", "alpha", "channel_offsets"}  # alpha: logged by the alpha monitor
        return {k: v for k, v in asdict(self).items() if k not in skip and not math.isnan(v)}

    def row(self) -> dict[str, object]:
        """One CSV row: every field but the per-channel list, plus the gain."""
        row = {k: v for k, v in asdict(self).items() if k != "channel_offsets"}
        row["gain"] = self.gain
        return row


def site_stats(site: str, module: nn.Module, rows: torch.Tensor, result: PreAffine) -> SiteStats:
    """The statistics of input rows ``(M, C)`` and the site's pre-affine ``result``, with one host sync."""
    channel_var, channel_mean = torch.var_mean(rows, dim=0, correction=0)  # (C,), (C,): one pass
    # The whole tensor's moments from the channels' (equal counts), combined in float64 to avoid cancellation.
    mean64 = channel_mean.double()
    std = ((channel_var.double() + mean64.square()).mean() - mean64.mean().square()).clamp_min(1e-24).sqrt()
    offsets = mean64.abs() / std  # (C,)
    channel_std = channel_var.double().sqrt()  # (C,)
    low, high = torch.aminmax(rows)
    nan = std.new_full((), math.nan)
    divisor = result.divisor.double() if result.divisor is not None else None
    values = torch.stack([  # in SiteStats' field order, input_std to scale
        std,
        offsets.mean(),
        channel_std.std(correction=0) / channel_std.mean().clamp_min(1e-12),
        torch.maximum(low.abs(), high.abs()).double(),
        (result.argument.abs() > SATURATION_LEVEL).double().mean(),
        module.alpha.detach().double().mean().to(std.device) if getattr(module, "alpha", None) is not None else nan,
        divisor.mean() if divisor is not None else nan,
        divisor.std(correction=0) / divisor.mean() if divisor is not None else nan,
        divisor.reciprocal().mean() if divisor is not None else nan,
    ])
    flat = torch.cat([values, offsets]).tolist()  # the one host sync
    return SiteStats(site, norm_name(module), rows.shape[1], *flat[:len(values)], channel_offsets=flat[len(values):])


def parameter_summary(module: nn.Module) -> dict[str, torch.Tensor]:
    """A DyT-family site's alpha and shift as 0-d tensors: the value, or mean/min/max when per channel."""
    summary = {}
    for name in ("alpha", "shift"):
        param = getattr(module, name, None)
        if param is None:
            continue
        param = param.detach()
        summary[name] = param.mean()
        if param.numel() > 1:
            summary[f"{name}_min"], summary[f"{name}_max"] = param.min(), param.max()
    return summary
