"""The DyT-family formula, ``weight * squash(alpha * (x - m) + shift) + bias``, as plain functions.

``SQUASHES`` is the one list of point-wise functions (name -> function of ``u = alpha * (x - m) + shift``);
``SQUASH_FORMULAS`` says what each computes. ``subtract_mean`` takes ``m`` away, for each ``center`` of
the vocabulary (``options.py``). ``reference_dynamic_squash`` is the rest of the formula written out in
eager PyTorch: the ground truth the tests compare everything against. ``dynamic_squash`` is what the
layers call; it routes to the fused implementation (``dyt_lab.norms.fused``) when asked and when that
path supports the input and the squash (tanh and erf), else to the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dyt_lab.norms.channels import per_channel

# The functions of the Derf paper's search (Chen, Lu, Zhu, Sun, Liu, "Stronger Normalization-Free
# Transformers", arXiv 2512.10938, section 4), each written so that its value and its gradient stay
# finite and agree with the paper's formula wherever that formula is differentiable. Two rules cover
# the odd functions ``sign(u) * h(|u|)``:
# - autograd through ``|u|`` gives slope 0 at u = 0 (torch's sign(0) = 0), where expsign, logsign and
#   saturlog have slope 1: ``_odd`` takes |u| as ``sign * u`` with ``sign`` a constant +-1, so the slope
#   at 0 is h'(0);
# - exproot and power23 have an infinite slope at u = 0 (sqrt|u|, |u|^(2/3)), where the paper's formula
#   gives a NaN gradient (sign(0) * inf). ``_root_safe`` defines it as 0 there by convention (what
#   torch's vector norms do at 0): a point exactly at 0 (a ReLU-zero patch with no shift) then sends
#   no gradient back, and every other point gets its true, finite slope.


def _odd(u: torch.Tensor, h: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``sign(u) * h(|u|)`` for an ``h`` with ``h(0) = 0``, whose slope at u = 0 is ``h'(0)``."""
    sign = torch.ones_like(u).copysign(u.detach())  # +-1, never 0: a constant to autograd
    return sign * h(sign * u)  # d/du = sign * h'(|u|) * sign = h'(|u|)


def _root_safe(a: torch.Tensor, g: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``g(a)`` for ``a >= 0`` with ``g(0) = 0`` and ``g'(0)`` infinite: 0 at a = 0 with gradient 0, no NaN.

    ``g`` sees 1 where ``a`` is 0, so its infinite slope there never meets the zero that ``where``
    sends back (0 * inf would be NaN); a NaN ``a`` stays NaN.
    """
    zero = a == 0
    return torch.where(zero, 0.0, g(torch.where(zero, 1.0, a)))


def _cube_bounded(a: torch.Tensor) -> torch.Tensor:
    """``a**3 / (a**3 + 1)`` for ``a >= 0``; ``a`` capped where the ratio is 1 to rounding, so a**3 never
    overflows to inf / inf (float32: a > 7e12; float16: a > 40)."""
    cap = torch.finfo(a.dtype).max ** (1 / 3) / 2  # a**3 + 1 stays finite; the ratio is 1 - 8 / max there
    c = a.clamp(max=cap) ** 3
    return c / (c + 1)


def _saturating_log(a: torch.Tensor) -> torch.Tensor:
    """``L / (L + 1)``, ``L = log(a + 1)``, for ``a >= 0``."""
    log_term = torch.log1p(a)
    return log_term / (log_term + 1)


def _isru(u: torch.Tensor) -> torch.Tensor:
    return u / torch.hypot(u, u.new_ones(()))  # hypot: sqrt(u^2 + 1) without u^2 overflowing


def _relsign(u: torch.Tensor) -> torch.Tensor:
    return u / (torch.hypot(u, u.new_ones(())) + 1)


def _smoothsign(u: torch.Tensor) -> torch.Tensor:
    return u / (1 + u.abs())  # slope 1 at u = 0: the |u| term's slope is multiplied by u = 0


# name -> (function of u, formula). The order is the paper's; 'none' (no squashing) is the control.
_TABLE: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "tanh": (torch.tanh, "tanh(u)"),
    "erf": (torch.erf, "erf(u)"),
    "arctan": (lambda u: torch.atan(u) * (2 / math.pi), "(2/pi) * arctan(u)"),
    "isru": (_isru, "u / sqrt(u^2 + 1)"),
    "relsign": (_relsign, "u / (sqrt(u^2 + 1) + 1)"),
    "smoothsign": (_smoothsign, "u / (1 + abs(u))"),
    # The paper's clip(u / (1 + |u|), -1, 1), as its authors' code computes it (zlab-princeton/Derf): the
    # same function as smoothsign, whose range is (-1, 1), and u / (1 + |u|) rounds to at most 1 in
    # floating point too, so the clip never acts; the same values and gradients, one pass fewer.
    "smoothsign_clip": (_smoothsign, "clip(u / (1 + abs(u)), -1, 1) (= smoothsign: the clip never acts)"),
    "cubsign": (lambda u: _odd(u, _cube_bounded), "u^3 / (abs(u)^3 + 1)"),
    "expsign": (lambda u: _odd(u, lambda a: -torch.expm1(-a)), "sign(u) * (1 - exp(-abs(u)))"),
    "exproot": (lambda u: _odd(u, lambda a: _root_safe(a, lambda r: -torch.expm1(-r.sqrt()))),
                "sign(u) * (1 - exp(-sqrt(abs(u)))) (slope at u = 0: 0 by convention)"),
    "linear_clip": (lambda u: u.clamp(-1, 1), "clip(u, -1, 1)"),
    "logquad_clip": (lambda u: _odd(u, lambda a: torch.log1p(a * a).clamp(max=1)),
                     "clip(sign(u) * log(u^2 + 1), -1, 1)"),
    "logsign_clip": (lambda u: _odd(u, lambda a: torch.log1p(a).clamp(max=1)),
                     "clip(sign(u) * log(abs(u) + 1), -1, 1)"),
    "power23_clip": (lambda u: _odd(u, lambda a: _root_safe(a, lambda r: r.pow(2 / 3)).clamp(max=1)),
                     "clip(sign(u) * abs(u)^(2/3), -1, 1) (slope at u = 0: 0 by convention)"),
    "saturlog": (lambda u: _odd(u, _saturating_log), "sign(u) * L / (L + 1), L = log(abs(u) + 1)"),
    "satursin": (lambda u: torch.sin(u.clamp(-math.pi / 2, math.pi / 2)), "sin(clip(u, -pi/2, pi/2))"),
    "none": (lambda u: u, "u (no squashing)"),
}
SQUASHES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {name: fn for name, (fn, _) in _TABLE.items()}
SQUASH_FORMULAS: dict[str, str] = {name: formula for name, (_, formula) in _TABLE.items()}


def subtract_mean(
    x: torch.Tensor,
    center: str,
    channels_last: bool,
    running_mean: torch.Tensor | None = None,
    momentum: float = 0.1,
    training: bool = False,
) -> torch.Tensor:
    """``x - m`` for a ``center``: none (m = 0), sample or batch; batch updates ``running_mean`` in training.

    ``sample``: each sample's per-channel mean over its positions (``H, W`` of ``(N, C, H, W)``, the
    tokens of ``(N, T, C)``). ``batch``: the ``(C,)`` mean over every other dim in training, with
    ``running_mean`` moved towards it in place (``(1 - momentum) * running + momentum * batch``, as
    ``F.batch_norm`` does), and ``running_mean`` itself in eval.
    """
    if center == "none":
        return x
    if center == "sample":
        positions = range(1, x.dim() - 1) if channels_last else range(2, x.dim())  # (N, T, C) / (N, C, H, W)
        if not positions:
            raise ValueError(f"center='sample' needs positions to average over; got an input of shape {tuple(x.shape)}")
        return x - x.mean(dim=tuple(positions), keepdim=True)
    channel_dim = x.dim() - 1 if channels_last else 1
    shape = [1] * x.dim()
    shape[channel_dim] = -1  # (1, ..., 1, C) or (1, C, 1, ...)
    if not training:
        return x - running_mean.to(x.dtype).view(shape)
    mean = x.mean(dim=[d for d in range(x.dim()) if d != channel_dim])  # (C,)
    with torch.no_grad():
        running_mean.lerp_(mean.detach().to(running_mean.dtype), momentum)
    return x - mean.view(shape)


def scale_shift(
    x: torch.Tensor, alpha: torch.Tensor, shift: torch.Tensor | None, channels_last: bool
) -> torch.Tensor:
    """``alpha * x + shift``, the argument of the squash."""
    z = x * per_channel(alpha, x, channels_last)
    if shift is not None:
        z = z + per_channel(shift, x, channels_last)
    return z


def reference_dynamic_squash(
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    channels_last: bool = True,
    squash: str = "tanh",
) -> torch.Tensor:
    """The formula as written: ``weight * squash(alpha * x + shift) + bias`` (several passes)."""
    z = scale_shift(x, alpha, shift, channels_last)
    s = SQUASHES[squash](z)
    return s * per_channel(weight, x, channels_last) + per_channel(bias, x, channels_last)


def dynamic_squash(
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    channels_last: bool = True,
    squash: str = "tanh",
    fused: bool = True,
) -> torch.Tensor:
    """``weight * squash(alpha * x + shift) + bias``, fused where supported, else the reference."""
    if fused:
        from dyt_lab.norms import fused as fused_impl  # imported lazily: it may build a kernel

        out = fused_impl.try_fused(x, alpha, shift, weight, bias, channels_last, squash)
        if out is not None:
            return out
    return reference_dynamic_squash(x, alpha, shift, weight, bias, channels_last, squash)
