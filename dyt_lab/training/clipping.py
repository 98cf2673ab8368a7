"""Adaptive gradient clipping (AGC, NF-Nets: Brock et al. 2021, "High-performance large-scale image
recognition without normalization"), as a Lightning callback.

Unit-wise: for every output unit ``i`` of a parameter (a row of a linear weight, a filter of a conv;
a 1-D parameter is one unit), the gradient is rescaled where it is large against the weight,
``G_i <- G_i * lambda * max(||W_i||, eps) / ||G_i||`` if ``||G_i|| / max(||W_i||, eps) > lambda``,
and left as it is otherwise. NF-Nets clip every parameter but the classifier's, whose gradient
clipping hurt. The arithmetic is timm's ``adaptive_clip_grad``; this file chooses the parameters
and the moment: Lightning's ``on_before_optimizer_step``, after the gradients are accumulated,
all-reduced over DDP ranks and unscaled from a mixed-precision loss scale, before the step (and
before Lightning's own ``gradient_clip_val``).
"""

from __future__ import annotations

import math

from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn

from dyt_lab.errors import ConfigError

DEFAULT_EPS = 1e-3  # NF-Nets': the weight norm's floor, so a zero-initialised unit (a SkipInit gain) can move


def check_clipping(option: str, value: object) -> float:
    """Return ``value`` if it is a finite number > 0, else a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{option} must be a finite number > 0 (NF-Nets use 0.01 at batch 4096), got {value!r}")
    return float(value)


def find_classifier(net: nn.Module) -> nn.Module:
    """The network's classifier: timm's ``get_classifier()``, else a ``head`` or ``fc`` module, else its last Linear."""
    if callable(getattr(net, "get_classifier", None)) and isinstance(net.get_classifier(), nn.Module):
        return net.get_classifier()
    for name in ("head", "fc"):
        if isinstance(getattr(net, name, None), nn.Module):
            return getattr(net, name)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"AdaptiveGradientClipping: {type(net).__name__} has no classifier (no head, fc or "
                          "nn.Linear) to leave unclipped")
    return linears[-1]


class AdaptiveGradientClipping(Callback):
    """Clip each output unit's gradient to ``clipping * max(||W_i||, eps)``; the classifier is left alone."""

    def __init__(self, clipping: float = 0.01, eps: float = DEFAULT_EPS) -> None:
        """Build the callback.

        Args:
            clipping: lambda, the largest gradient-to-weight norm ratio a unit keeps (NF-Nets: 0.01 at batch 4096,
                larger for smaller batches).
            eps: the floor of a unit's weight norm, so zero-initialised parameters still get a gradient.
        """
        super().__init__()
        self.clipping = check_clipping("AdaptiveGradientClipping clipping (lambda)", clipping)
        self.eps = check_clipping("AdaptiveGradientClipping eps", eps)
        self._parameters: list[nn.Parameter] | None = None

    @staticmethod
    def clipped_parameters(pl_module: LightningModule) -> list[nn.Parameter]:
        """Every trainable parameter of the module except the classifier's (of ``pl_module.net`` if it has one)."""
        net = getattr(pl_module, "net", pl_module)
        skip = {id(p) for p in find_classifier(net).parameters()}
        return [p for p in pl_module.parameters() if p.requires_grad and id(p) not in skip]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._parameters = self.clipped_parameters(pl_module)  # found once: the set does not change in a fit

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        from timm.utils.agc import adaptive_clip_grad  # timm costs 0.6 s to import: only where AGC runs

        if self._parameters is None:
            self._parameters = self.clipped_parameters(pl_module)
        adaptive_clip_grad(self._parameters, clip_factor=self.clipping, eps=self.eps)

    def __repr__(self) -> str:
        return f"AdaptiveGradientClipping(clipping={self.clipping:g}, eps={self.eps:g})"
