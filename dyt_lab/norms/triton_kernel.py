"""Triton kernels for the fused DyT on CUDA: ``weight * squash(alpha * x + shift) + bias``.

Same contract as the C++ CPU kernel (``csrc/dynamic_squash.cpp``): x contiguous, float32/bf16/fp16,
parameters float32 of shape ``(C,)`` or ``(1,)``, math in float32. Both layouts are seen as
``(outer, C, inner)`` and tiled as ``(BLOCK_M positions of outer x inner, BLOCK_C channels)``, so a
tile's parameters are one ``(BLOCK_C,)`` load. Backward writes grad_x and per-program partial sums of
the four parameter gradients, ``(4, programs, C)``, which torch sums (a tiny second pass).

tanh is the same rational function as the CPU kernel's (no libdevice call), so the kernels also run
under ``TRITON_INTERPRET=1`` on CPU tensors, which is how tests/norms/test_fused.py checks them.
"""

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional: CUDA then uses the pure-PyTorch function
    triton = None


def unavailable_reason() -> str | None:
    """None if the Triton kernels can run on CUDA tensors here, else why not."""
    if triton is None:
        return "Triton is not installed (pip install triton)"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    return None


def _view(x: torch.Tensor, channels_last: bool) -> tuple[int, int, int]:
    """(positions M = outer * inner, channels C, inner) of a contiguous x."""
    channels = x.shape[-1] if channels_last else x.shape[1]
    inner = 1 if channels_last else math.prod(x.shape[2:])
    return x.numel() // max(channels, 1), channels, inner


def _blocks(channels_last: bool) -> tuple[int, int]:
    # channels-last: channels are contiguous, so a tile is wide; channels-first: positions are.
    return (32, 64) if channels_last else (256, 4)


if triton is not None:

    @triton.jit
    def _tanh(z):
        # x * P(x^2) / Q(x^2) on x clamped to +-7.9; coefficients shared with the C++ kernel.
        x = tl.minimum(tl.maximum(z, -7.9), 7.9)
        s = x * x
        p = (((1.5427739e-08 * s + 2.2023092e-05) * s + 3.5789832e-03) * s + 1.3450614e-01) * s + 1.0
        q = (((8.5986898e-07 * s + 3.4236358e-04) * s + 2.6192205e-02) * s + 4.6783942e-01) * s + 1.0
        return x * p / q

    @triton.jit
    def _tile(mb, pid_c, M, C, inner, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        # Element offsets (BLOCK_M, BLOCK_C) of positions mb*BLOCK_M.. and channels pid_c*BLOCK_C..
        m = (mb * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        row = (m // inner) * C * inner + m % inner  # (outer, inner) -> offset of channel 0
        offs = row[:, None] + (c.to(tl.int64) * inner)[None, :]
        return offs, (m < M)[:, None] & (c < C)[None, :]

    @triton.jit
    def _params(ptr, stride, pid_c, C, BLOCK_C: tl.constexpr):
        # A (1, BLOCK_C) row of a (C,) parameter, or of a (1,) one broadcast (stride 0).
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        return tl.load(ptr + c * stride, mask=c < C, other=0.0)[None, :]

    @triton.jit
    def _forward_kernel(
        x_ptr, y_ptr, a_ptr, s_ptr, w_ptr, b_ptr, M, C, inner, a_stride, s_stride,
        HAS_SHIFT: tl.constexpr, IS_TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        pid_m, pid_c = tl.program_id(0), tl.program_id(1)
        offs, mask = _tile(pid_m, pid_c, M, C, inner, BLOCK_M, BLOCK_C)
        z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * _params(a_ptr, a_stride, pid_c, C, BLOCK_C)
        if HAS_SHIFT:
            z += _params(s_ptr, s_stride, pid_c, C, BLOCK_C)
        if IS_TANH:
            t = _tanh(z)
        else:
            t = tl.math.erf(z)
        y = t * _params(w_ptr, 1, pid_c, C, BLOCK_C) + _params(b_ptr, 1, pid_c, C, BLOCK_C)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_kernel(
        g_ptr, x_ptr, gx_ptr, a_ptr, s_ptr, w_ptr, part_ptr, M, C, inner, a_stride, s_stride, programs,
        HAS_SHIFT: tl.constexpr, IS_TANH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        pid_m, pid_c = tl.program_id(0), tl.program_id(1)
        a = _params(a_ptr, a_stride, pid_c, C, BLOCK_C)
        s = _params(s_ptr, s_stride, pid_c, C, BLOCK_C) * HAS_SHIFT  # s_ptr is alpha's without a shift
        w = _params(w_ptr, 1, pid_c, C, BLOCK_C)
        sum_a = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
        sum_s = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
        sum_w = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
        sum_b = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
        for mb in range(pid_m, tl.cdiv(M, BLOCK_M), programs):  # this program's share of positions
            offs, mask = _tile(mb, pid_c, M, C, inner, BLOCK_M, BLOCK_C)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # 0 off the tile: adds nothing
            z = x * a + s
            if IS_TANH:
                t = _tanh(z)
                dt = 1.0 - t * t
            else:
                t = tl.math.erf(z)
                dt = 1.1283791670955126 * tl.exp(-z * z)  # 2/sqrt(pi) exp(-z^2)
            dz = g * w * dt
            sum_a += dz * x
            sum_s += dz
            sum_w += g * t
            sum_b += g
            tl.store(gx_ptr + offs, (dz * a).to(gx_ptr.dtype.element_ty), mask=mask)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        out = part_ptr + pid_m * C + c  # part: (4, programs, C)
        tl.store(out, tl.sum(sum_a, axis=0), mask=c < C)
        tl.store(out + programs * C, tl.sum(sum_s, axis=0), mask=c < C)
        tl.store(out + 2 * programs * C, tl.sum(sum_w, axis=0), mask=c < C)
        tl.store(out + 3 * programs * C, tl.sum(sum_b, axis=0), mask=c < C)


def forward(x, alpha, shift, weight, bias, channels_last: bool, squash: str, out_dtype) -> torch.Tensor:
    """y = weight * squash(alpha * x + shift) + bias, in one pass (x contiguous, params float32)."""
    M, C, inner = _view(x, channels_last)
    y = torch.empty_like(x, dtype=out_dtype)
    if x.numel() == 0:
        return y
    block_m, block_c = _blocks(channels_last)
    grid = (triton.cdiv(M, block_m), triton.cdiv(C, block_c))
    has_shift = shift is not None
    _forward_kernel[grid](
        x, y, alpha, shift if has_shift else alpha, weight, bias, M, C, inner,
        int(alpha.numel() > 1), int(has_shift and shift.numel() > 1),
        HAS_SHIFT=has_shift, IS_TANH=squash == "tanh", BLOCK_M=block_m, BLOCK_C=block_c,
    )
    return y


def backward(grad_out, x, alpha, shift, weight, channels_last: bool, squash: str) -> list[torch.Tensor]:
    """[grad_x, grad_alpha, grad_shift (empty without shift), grad_weight, grad_bias] in one pass."""
    M, C, inner = _view(x, channels_last)
    grad_out = grad_out.contiguous()
    gx = torch.empty_like(x)
    block_m, block_c = _blocks(channels_last)
    programs = max(1, min(triton.cdiv(M, block_m), 256))  # partial sums: (4, programs, C), summed below
    part = torch.zeros(4, programs, C, device=x.device, dtype=torch.float32)
    has_shift = shift is not None
    if x.numel() > 0:
        _backward_kernel[(programs, triton.cdiv(C, block_c))](
            grad_out, x, gx, alpha, shift if has_shift else alpha, weight, part, M, C, inner,
            int(alpha.numel() > 1), int(has_shift and shift.numel() > 1), programs,
            HAS_SHIFT=has_shift, IS_TANH=squash == "tanh", BLOCK_M=block_m, BLOCK_C=block_c,
        )
    sums = part.sum(1)  # (4, C)

    def like(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        return grad.sum().reshape(1) if param.numel() == 1 else grad.clone()

    grad_shift = like(sums[1], shift) if has_shift else sums.new_empty(0)
    return [gx, like(sums[0], alpha), grad_shift, like(sums[2], weight), like(sums[3], weight)]
