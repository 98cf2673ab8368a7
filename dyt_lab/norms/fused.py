"""Fused DyT: ``weight * squash(alpha * x + shift) + bias`` in one pass forward and one backward.

The eager formula makes four passes over memory forward and keeps two input-sized tensors for
backward. The fused paths read ``x`` once and write ``y`` once, save only ``x`` (plus the small
parameters) and recompute the squash in backward, where ``grad_x`` and all four parameter
gradients come out of one more pass. Three implementations, picked per call by ``try_fused``:

- CPU: a C++ kernel (``csrc/dynamic_squash.cpp``, built on first use, see ``cpu_kernel``);
- CUDA: Triton kernels (``triton_kernel``) where Triton is installed;
- anywhere else, or when the kernel cannot be built: ``DynamicSquashFunction``, pure PyTorch.

Eager CPU calls go straight to ``torch.ops.dyt_lab_cpu.forward``, whose autograd is in C++ (as
cheap a call as nn.LayerNorm's). Under ``torch.compile``, and on CUDA, the kernels run inside one
``torch.library`` custom op, ``dyt_lab::dynamic_squash``, with a fake implementation and an
autograd formula, so the compiler traces through it without a graph break. ``try_fused`` returns
None (and warns once, naming the reason) for inputs no fused path handles, and the caller falls
back to the reference formula.

Only tanh and erf are fused (``FUSED_SQUASHES``). The other point-wise functions of
``functional.SQUASHES`` run their eager formula, by design and without a warning: each would need its
own vectorised forward and hand-derived backward in the C++ kernel and in the Triton kernels, with the
eager path's conventions at its kinks, and each squash multiplies the kernel's template instances
(6 dtype pairs x 2 layouts x forward/backward), which lengthens its first-use build (40-70 s today).
"""

import functools
import math
import warnings

import torch

from dyt_lab.norms.channels import per_channel

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REDUCED = (torch.float16, torch.bfloat16)
_SQUASH_CODES = {"tanh": 0, "erf": 1}  # the kernels' `squash` argument (csrc/squash_math.h: kTanh, kErf)
FUSED_SQUASHES: tuple[str, ...] = tuple(_SQUASH_CODES)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
# The CPU kernel runs a channels-last row of C values in blocks of 32 floats (two AVX-512 vectors),
# and a row shorter than a block through its zero-padded tail copy. Rows of few channels are read
# several at a time instead (see _rows_at_once): 2-4x faster forward and backward for C = 16.
_ROW_BLOCK = 32
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


# The kernels as one custom op (for torch.compile and CUDA). Parameters arrive in the compute dtype
# (float32, or float64 when the output is float64); x may be bf16/fp16 with a float32 output, as
# the reference promotes. The backward op returns [grad_x, grad_alpha, grad_shift or an empty
# tensor, grad_weight, grad_bias]; it has no autograd of its own (no double backward).

_FORWARD_SCHEMA = (
    "(Tensor x, Tensor alpha, Tensor? shift, Tensor weight, Tensor bias, bool channels_last, str squash, "
    "ScalarType out_dtype) -> Tensor"
)
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor x, Tensor alpha, Tensor? shift, Tensor weight, bool channels_last, "
    "str squash) -> Tensor[]"
)


def _kernel_forward(x, alpha, shift, weight, bias, channels_last, squash, out_dtype):
    """Fused forward on the kernel for x's device (C++ on CPU, Triton on CUDA)."""
    if x.device.type == "cuda":
        from dyt_lab.norms import triton_kernel

        return triton_kernel.forward(x, alpha, shift, weight, bias, channels_last, squash, out_dtype)
    return torch.ops.dyt_lab_cpu.forward(x, alpha, shift, weight, bias, channels_last, _SQUASH_CODES[squash], out_dtype)


def _kernel_backward(grad_out, x, alpha, shift, weight, channels_last, squash):
    """Fused backward: grad_x and the four parameter gradients from one pass over x and grad_out."""
    if x.device.type == "cuda":
        from dyt_lab.norms import triton_kernel

        return triton_kernel.backward(grad_out, x, alpha, shift, weight, channels_last, squash)
    return torch.ops.dyt_lab_cpu.backward(grad_out, x, alpha, shift, weight, channels_last, _SQUASH_CODES[squash])


fused_forward = torch.library.custom_op("dyt_lab::dynamic_squash", _kernel_forward, mutates_args=(), schema=_FORWARD_SCHEMA)
fused_backward = torch.library.custom_op(
    "dyt_lab::dynamic_squash_backward", _kernel_backward, mutates_args=(), schema=_BACKWARD_SCHEMA
)


@fused_forward.register_fake
def _forward_fake(x, alpha, shift, weight, bias, channels_last, squash, out_dtype):
    return torch.empty_like(x, dtype=out_dtype, memory_format=torch.contiguous_format)


@fused_backward.register_fake
def _backward_fake(grad_out, x, alpha, shift, weight, channels_last, squash):
    grad_shift = torch.empty_like(shift) if shift is not None else weight.new_empty(0)
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    return [grad_x, torch.empty_like(alpha), grad_shift, torch.empty_like(weight), torch.empty_like(weight)]


def _setup_context(ctx, inputs, output):
    x, alpha, shift, weight, _bias, channels_last, squash, _out_dtype = inputs
    ctx.save_for_backward(x, alpha, shift, weight)  # the input and three tiny parameters
    ctx.channels_last, ctx.squash = channels_last, squash


def _fused_autograd(ctx, grad_out):
    x, alpha, shift, weight = ctx.saved_tensors
    gx, ga, gs, gw, gb = fused_backward(grad_out, x, alpha, shift, weight, ctx.channels_last, ctx.squash)
    return gx, ga, gs if shift is not None else None, gw, gb, None, None, None


fused_forward.register_autograd(_fused_autograd, setup_context=_setup_context)


# Routing: which implementation takes a call, and the one-time warnings when none of the fast ones can.


def _warn_once(message: str, stacklevel: int) -> None:
    # stacklevel counts from the caller of _warn_once up to the user line that called the layer.
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=stacklevel + 1)


# torch.compile runs this for real while tracing (it cannot trace a build or warnings.warn) and
# keeps the answer as a constant; so the build and the warning happen outside any graph.
@torch.compiler.assume_constant_result
def kernel_unavailable_reason(device_type: str) -> str | None:
    """None if the fused kernel for this device type is ready (building it on first use), else why
    not, after warning once that the slower pure-PyTorch function will be used."""
    if device_type == "cpu":
        from dyt_lab.norms import cpu_kernel

        reason = cpu_kernel.unavailable_reason()
    elif device_type == "cuda":
        from dyt_lab.norms import triton_kernel

        reason = triton_kernel.unavailable_reason()
    else:
        reason = f"no fused kernel for device type {device_type!r}"
    if reason is not None:
        _warn_once(f"fused DyT kernel unavailable, using the slower pure-PyTorch function: {reason}", 7)
    return reason


def unsupported_reason(x, alpha, shift, weight, bias, channels_last: bool) -> str | None:
    """Why no fused path can take these tensors, or None when one can."""
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not one of {[str(d) for d in SUPPORTED_DTYPES]}"
    if x.dim() < (1 if channels_last else 2):
        layout = "channels-last input needs at least 1 dim (..., C)" if channels_last else (
            "channels-first input needs at least 2 dims (N, C, ...)"
        )
        return f"{layout}, got shape {tuple(x.shape)}"
    params = [p for p in (alpha, shift, weight, bias) if p is not None]
    if any(p.dtype not in SUPPORTED_DTYPES or p.device != x.device or p.dim() != 1 for p in params):
        return "parameters must be 1-d floating tensors on the input's device"
    channels = x.shape[-1] if channels_last else x.shape[1]
    if weight.numel() != channels or bias.numel() != channels or any(p.numel() not in (1, channels) for p in params):
        return f"parameter sizes {[p.numel() for p in params]} do not match {channels} channels"
    return None


def _rows_at_once(channels: int, numel: int) -> int:
    """How many channels-last rows of ``channels`` values to read as one: enough for whole kernel blocks
    (2 for 16 channels, 4 for 24), where they divide the rows and stay short; else 1."""
    if channels == 0:
        return 1
    rows = math.lcm(channels, _ROW_BLOCK) // channels
    return rows if rows > 1 and rows * channels <= 8 * _ROW_BLOCK and (numel // channels) % rows == 0 else 1


def try_fused(x, alpha, shift, weight, bias, channels_last: bool, squash: str) -> torch.Tensor | None:
    """The fused result, or None when the squash has no kernel or (after a one-time warning) the input is
    not supported."""
    if squash not in _SQUASH_CODES:  # the eager formula is this squash's implementation, not a fallback
        return None
    if not channels_last and x.dim() > 2 and not x.is_contiguous():
        tokens = x.movedim(1, -1)  # (N, *spatial, C): contiguous when x is stored channels-last (NHWC)
        if tokens.is_contiguous():
            # Read in place as tokens; the contiguous() copy below cost a fifth of a DyT ResNet
            # step stored channels-last (a torch.profiler profile of the MNIST5k testbed).
            out = try_fused(tokens, alpha, shift, weight, bias, True, squash)
            return None if out is None else out.movedim(-1, 1)  # (N, C, *spatial), stored channels-last
    if channels_last and x.dim() >= 1 and x.is_contiguous() and x.device.type == "cpu":
        rows = _rows_at_once(x.shape[-1], x.numel())
        if rows > 1:  # (M, C) read as (M / rows, rows * C), the per-channel parameters tiled alongside
            def tile(p):
                return p if p is None or p.numel() == 1 else p.repeat(rows)

            out = try_fused(x.reshape(-1, rows * x.shape[-1]), tile(alpha), tile(shift), tile(weight), tile(bias),
                            True, squash)
            return None if out is None else out.view(x.shape)
    reason = unsupported_reason(x, alpha, shift, weight, bias, channels_last)
    if reason is not None:
        if not torch.compiler.is_compiling():  # dynamo cannot trace warnings.warn; eager calls do warn
            _warn_once(f"fused DyT falls back to the reference formula: {reason}", 6)
        return None
    dtypes = [p.dtype for p in (alpha, shift, weight, bias) if p is not None]
    out_dtype = functools.reduce(torch.promote_types, dtypes, x.dtype)  # what the reference returns
    if x.device.type == "cuda" and out_dtype == torch.float64:  # the Triton kernels compute in float32
        return DynamicSquashFunction.apply(x, alpha, shift, weight, bias, channels_last, squash)
    if kernel_unavailable_reason(x.device.type) is not None:
        return DynamicSquashFunction.apply(x, alpha, shift, weight, bias, channels_last, squash)
    compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    if x.dtype != out_dtype and not (x.dtype in _REDUCED and out_dtype == torch.float32):
        x = x.to(out_dtype)  # e.g. float32 x with float64 params: the reference computes in float64
    alpha, shift, weight, bias = (p.to(compute) if p is not None else None for p in (alpha, shift, weight, bias))
    x = x.contiguous()
    if x.device.type == "cpu" and not torch.compiler.is_compiling():  # its autograd is in C++: cheapest
        return torch.ops.dyt_lab_cpu.forward(x, alpha, shift, weight, bias, channels_last, _SQUASH_CODES[squash], out_dtype)
    return fused_forward(x, alpha, shift, weight, bias, channels_last, squash, out_dtype)
