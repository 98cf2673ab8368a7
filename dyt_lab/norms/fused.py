"""Fused DyT: ``weight * squash(alpha * x + shift) + bias`` in few passes, saving only ``x``.

The eager formula makes four passes over memory forward and keeps two input-sized tensors for
backward. ``DynamicSquashFunction`` computes in place on one output buffer, saves only the input,
and recomputes the squash in backward, where all five gradients come out of one more buffer.

``try_fused`` is the entry point used by the layers: it returns None (and warns once, naming the
reason) for inputs the fused path does not handle, so the caller falls back to the reference.
"""

from __future__ import annotations

import math
import warnings

import torch

from dyt_lab.norms.functional import per_channel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_warned: set[str] = set()


def _reduce_to(grad: torch.Tensor, param: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Sum an input-shaped gradient down to a ``(C,)`` or ``(1,)`` parameter's shape."""
    if param.numel() == 1:
        return grad.sum().reshape(1)
    if channels_last:
        return grad.reshape(-1, grad.shape[-1]).sum(0)  # (..., C) -> (C,)
    return grad.transpose(0, 1).reshape(grad.shape[1], -1).sum(1)  # (N, C, *S) -> (C,)


class DynamicSquashFunction(torch.autograd.Function):
    """Autograd function for the DyT family that saves only ``x`` and recomputes the squash."""

    @staticmethod
    def forward(ctx, x, alpha, shift, weight, bias, channels_last: bool, squash: str):
        ctx.channels_last, ctx.squash = channels_last, squash
        ctx.save_for_backward(x, alpha, shift, weight)
        y = x * per_channel(alpha, x, channels_last)  # the one input-sized buffer
        if shift is not None:
            y.add_(per_channel(shift, x, channels_last))
        y.tanh_() if squash == "tanh" else y.erf_()
        return y.mul_(per_channel(weight, x, channels_last)).add_(per_channel(bias, x, channels_last))

    @staticmethod
    def backward(ctx, grad_out):
        x, alpha, shift, weight = ctx.saved_tensors
        cl = ctx.channels_last
        need_x, need_alpha, need_shift, need_weight, need_bias = ctx.needs_input_grad[:5]
        z = x * per_channel(alpha, x, cl)
        if shift is not None:
            z.add_(per_channel(shift, x, cl))
        s = torch.tanh(z) if ctx.squash == "tanh" else torch.erf(z)
        grad_weight = _reduce_to(grad_out * s, weight, cl) if need_weight else None
        grad_bias = _reduce_to(grad_out, weight, cl) if need_bias else None
        # d squash / dz: 1 - tanh^2 (reusing s's buffer) or 2/sqrt(pi) * exp(-z^2) (reusing z's).
        if ctx.squash == "tanh":
            dz = s.square_().neg_().add_(1)
        else:
            dz = z.square_().neg_().exp_().mul_(_TWO_OVER_SQRT_PI)
        dz.mul_(grad_out).mul_(per_channel(weight, x, cl))  # dL/dz
        grad_alpha = _reduce_to(dz * x, alpha, cl) if need_alpha else None
        grad_shift = _reduce_to(dz, shift, cl) if need_shift else None
        grad_x = dz.mul_(per_channel(alpha, x, cl)) if need_x else None
        return grad_x, grad_alpha, grad_shift, grad_weight, grad_bias, None, None


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"fused DyT falls back to the reference formula: {reason}", stacklevel=4)


def unsupported_reason(x: torch.Tensor, channels_last: bool) -> str | None:
    """Why the fused path cannot take ``x``, or None when it can."""
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not one of {[str(d) for d in SUPPORTED_DTYPES]}"
    if not channels_last and x.dim() < 2:
        return f"channels-first input needs at least 2 dims (N, C, ...), got shape {tuple(x.shape)}"
    return None


def try_fused(x, alpha, shift, weight, bias, channels_last: bool, squash: str) -> torch.Tensor | None:
    """The fused result, or None (after a one-time warning) when the input is not supported."""
    reason = unsupported_reason(x, channels_last)
    if reason is not None:
        _warn_once(reason)
        return None
    return DynamicSquashFunction.apply(x, alpha, shift, weight, bias, channels_last, squash)
