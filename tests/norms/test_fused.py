"""The fused DyT kernels against the reference formula: values, every gradient, memory, fallbacks.

tests/norms/test_norm_layers.py already checks each layer class against its formula and gradchecks it with
fused=True/False; here the subject is the kernel path itself: every (squash x alpha x shift x
layout) combination through ``dynamic_squash``, dtypes, layouts, compile, autocast and fallbacks.
"""

import os
import subprocess
import sys
import textwrap
import warnings
from itertools import product

import pytest
import torch
from torch.autograd import gradcheck

from dyt_lab.norms import DYT_FAMILY, DyT, ShiftedDyT, cpu_kernel, fused
from dyt_lab.norms.functional import dynamic_squash, reference_dynamic_squash

C = 37  # not a multiple of any vector width, so every row ends in a partial block
VARIANTS = list(product(["tanh", "erf"], ["scalar", "channel"], [None, "scalar", "channel"]))
# A fallback warning is an error here, so no test can pass on the reference path by accident;
# the two tests about fallbacks record warnings themselves.
pytestmark = pytest.mark.filterwarnings("error:fused DyT")


@pytest.fixture(scope="module", autouse=True)
def _kernel_built():
    reason = cpu_kernel.unavailable_reason()
    assert reason is None, f"the C++ kernel must build for these tests: {reason}"


def _x(channels_last: bool, dtype=torch.float64, batch: int = 3) -> torch.Tensor:
    # channels-first rows of 35 positions: whole vector blocks and a partial one, in float and double
    shape = (batch, 5, C) if channels_last else (batch, C, 5, 7)
    return torch.randn(shape, dtype=dtype) * 2


def _params(alpha_shape, shift_shape, dtype=torch.float64):
    """alpha, shift, weight, bias with the given shapes ("scalar", "channel" or None)."""

    def make(kind):
        return None if kind is None else torch.rand(1 if kind == "scalar" else C, dtype=dtype) + 0.5

    return make(alpha_shape), make(shift_shape), make("channel"), make("channel") - 1


def _fused_and_reference(x, params, channels_last, squash, grad_out):
    """[(y, *grads) of the fused path, the same of the reference] for one grad_out."""
    results = []
    for is_fused in (True, False):
        args = [t.detach().requires_grad_() if t is not None else None for t in (x, *params)]
        y = dynamic_squash(*args, channels_last, squash, fused=is_fused)
        leaves = [t for t in args if t is not None]
        results.append((y, *torch.autograd.grad(y, leaves, grad_out.to(y.dtype))))
    return results


def _assert_close_for_dtype(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype and close for that dtype; atol scales with the values (sums over many elements)."""
    assert got.dtype == want.dtype
    rtol = {torch.bfloat16: 5e-2, torch.float16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-10}[want.dtype]
    scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize(("squash", "alpha_shape", "shift_shape"), VARIANTS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_gradcheck_every_variant(squash, alpha_shape, shift_shape, channels_last):
    params = _params(alpha_shape, shift_shape)
    # Small for gradcheck's one-element-at-a-time Jacobian, yet rows of 37 and 11 doubles both hold
    # whole vector blocks (8 doubles on AVX2) and a partial one.
    x = torch.randn((2, 3, C) if channels_last else (1, C, 11), dtype=torch.float64)
    tensors = [t.requires_grad_() for t in (x, *params) if t is not None]

    def run(*inputs):  # the shift, when there is none, is simply not among gradcheck's inputs
        it = iter(inputs)
        x, alpha, shift = next(it), next(it), next(it) if shift_shape else None
        return dynamic_squash(x, alpha, shift, *it, channels_last, squash, fused=True)

    assert gradcheck(run, tensors, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels_last", [True, False])
def test_custom_op_for_compile_and_cuda_passes_opcheck_and_gradcheck(channels_last):
    # Eager CPU calls use the C++ autograd; torch.compile and CUDA use this op and its Python autograd.
    alpha, shift, weight, bias = _params("channel", "scalar")
    x = _x(channels_last, batch=1)
    inputs = [t.requires_grad_() for t in (x, alpha, shift, weight, bias)]
    flags = (channels_last, "erf", torch.float64)
    torch.library.opcheck(fused.fused_forward, (*inputs, *flags))  # schema, fake tensors, autograd registration
    plain = [t.detach() for t in (torch.randn_like(x), x, alpha, shift, weight)]  # it has no autograd itself
    torch.library.opcheck(fused.fused_backward, (*plain, channels_last, "tanh"))
    assert gradcheck(lambda *t: fused.fused_forward(*t, *flags), inputs, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize(("squash", "alpha_shape", "shift_shape"), VARIANTS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_float32_matches_reference_to_1e_6(squash, alpha_shape, shift_shape, channels_last):
    x, params = _x(channels_last) / 2, _params(alpha_shape, shift_shape)  # float64, x ~ N(0, 1)
    grad_out = torch.randn(x.shape, dtype=torch.float64)
    truth = _fused_and_reference(x, params, channels_last, squash, grad_out)[1]
    params32 = [p.float() if p is not None else None for p in params]
    got, eager = _fused_and_reference(x.float(), params32, channels_last, squash, grad_out)
    for g, e in zip(got[:2], eager[:2]):  # y and grad_x, element by element
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    # Parameter gradients are sums over hundreds of float32 products, which eager float32 itself
    # gets only to a few 1e-6: judge both against float64 and ask the kernel to be as accurate.
    for g, e, t in zip(got[2:], eager[2:], truth[2:]):
        error, eager_error = (g.double() - t).abs().max(), (e.double() - t).abs().max()
        assert error <= max(2 * eager_error, 1e-6 * max(t.abs().max().item(), 1.0))


@pytest.mark.parametrize(("squash", "alpha_shape", "shift_shape"), VARIANTS)
@pytest.mark.parametrize(("channels", "rows_at_once"), [(16, 2), (24, 4), (8, 4)])
def test_few_channels_read_several_rows_at_once_match_reference(squash, alpha_shape, shift_shape, channels,
                                                                 rows_at_once):
    """Channels-last rows of 8-24 channels go through the kernel several at a time, the parameters
    tiled: values and every gradient (summed back over the tiles) as the reference gives them."""
    assert fused._rows_at_once(channels, 4 * 6 * channels) == rows_at_once
    x = torch.randn(4, 6, channels, dtype=torch.float64)

    def make(kind):
        return None if kind is None else torch.rand(1 if kind == "scalar" else channels, dtype=torch.float64) + 0.5

    params = [make(alpha_shape), make(shift_shape), make("channel"), make("channel") - 1]
    got, want = _fused_and_reference(x, params, True, squash, torch.randn(x.shape, dtype=torch.float64))
    for g, w in zip(got, want):
        _assert_close_for_dtype(g, w)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("squash", "alpha_shape", "shift_shape"), [("tanh", "channel", "scalar"), ("erf", "scalar", "channel")])
def test_large_input_reductions_match_in_float64(squash, alpha_shape, shift_shape, channels_last):
    # ~90k elements: several chunks of rows and blocks of 256 rows inside each chunk, so every path
    # of the kernel's reduction is summed and combined; float64 makes any slip visible.
    x = _x(channels_last, batch=480 if channels_last else 72)
    got, want = _fused_and_reference(x, _params(alpha_shape, shift_shape), channels_last, squash, torch.randn(x.shape))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10 * max(w.abs().max().item(), 1.0))


def test_fast_tanh_is_within_3_eps_and_keeps_special_values():
    grid = torch.cat([torch.linspace(-12, 12, 200_001), torch.logspace(-30, 1, 5001), -torch.logspace(-30, 1, 5001)])
    special = torch.tensor([0.0, float("inf"), -float("inf"), float("nan"), 1e30, -1e30])
    one = torch.ones(1)
    y = fused.try_fused(torch.cat([grid, special])[:, None], one, None, one, torch.zeros(1), True, "tanh").flatten()
    exact = torch.tanh(grid.double())
    nonzero = exact != 0
    assert ((y[: grid.numel()].double() - exact).abs() / exact.abs())[nonzero].max() <= 3 * 2**-23
    assert y[~y.isnan()].abs().max() <= 1.0
    tail = y[-6:]  # 0, inf, -inf, nan, 1e30, -1e30
    assert tail[0] == 0 and tail[3].isnan()
    torch.testing.assert_close(tail[[1, 2, 4, 5]], torch.tensor([1.0, -1.0, 1.0, -1.0]), rtol=0, atol=3 * 2**-23)


@pytest.mark.parametrize("squash", ["tanh", "erf"])
def test_nan_input_gives_nan_output_and_gradient(squash):
    x = torch.tensor([[0.5, float("nan"), -1.0]], requires_grad=True)
    w = torch.ones(3, requires_grad=True)
    y = dynamic_squash(x, torch.ones(1), None, w, torch.zeros(3), True, squash, fused=True)
    y.sum().backward()
    assert y[0, 1].isnan() and not y[0, 0].isnan() and x.grad[0, 1].isnan() and w.grad[1].isnan()


def test_double_backward_is_refused_not_wrong():
    x = _x(True).requires_grad_()
    y = DyT(C).double()(x).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y, x, create_graph=True)  # the kernel's backward is not differentiable


def _saved_bytes(fn, x) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


def test_only_the_input_is_saved_for_backward():
    x = torch.randn(16, 50, 64, requires_grad=True)
    x_bytes = x.numel() * x.element_size()
    fused_bytes = _saved_bytes(ShiftedDyT(64), x)
    assert x_bytes <= fused_bytes <= x_bytes + 3 * 64 * 4  # x plus alpha, shift, weight
    assert fused_bytes <= _saved_bytes(torch.nn.LayerNorm(64), x)
    assert _saved_bytes(ShiftedDyT(64, fused=False), x) >= 2 * x_bytes  # the count does see big tensors


@pytest.mark.parametrize("cls", DYT_FAMILY)
@pytest.mark.parametrize("channels_last", [True, False])
def test_state_dict_from_unfused_layer_loads_into_fused(cls, channels_last):
    unfused = cls(C, channels_last=channels_last, fused=False)
    with torch.no_grad():
        for p in unfused.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    x = _x(channels_last, torch.float32)
    unfused(x)  # CenteredDyT: move the running mean off zero
    layer = cls(C, channels_last=channels_last, fused=True)
    layer.load_state_dict(unfused.state_dict())
    unfused.eval(), layer.eval()
    torch.testing.assert_close(layer(x), unfused(x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_torch_compile_full_graph_matches_eager_reference():
    layers = [ShiftedDyT(8, alpha_init=0.8, channels_last=False, fused=f) for f in (True, False)]
    with torch.no_grad():
        layers[0].shift.fill_(0.3)
        layers[0].weight.uniform_(0.5, 1.5)
    layers[1].load_state_dict(layers[0].state_dict())
    compiled = torch.compile(layers[0], fullgraph=True)  # fullgraph: a graph break would be an error
    x = torch.randn(2, 8, 3, 3)
    results = []
    for run, module in ((compiled, layers[0]), (layers[1], layers[1])):
        leaf = x.clone().requires_grad_()
        y = run(leaf)
        (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
        results.append([y, leaf.grad, *(p.grad for p in module.parameters())])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_autocast_bf16_matches_reference_and_promotes_like_it():
    linear = torch.nn.Linear(C, C)
    layers = {f: ShiftedDyT(C, fused=f) for f in (True, False)}
    layers[False].load_state_dict(layers[True].state_dict())
    results = {}
    for f, layer in layers.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = linear(torch.randn(4, 6, C, generator=torch.Generator().manual_seed(1)))  # bf16
            y = layer(h)
        y.square().sum().backward()
        results[f] = (y, *(p.grad.clone() for p in (*layer.parameters(), linear.weight)))
        linear.zero_grad()
    assert h.dtype == torch.bfloat16 and results[True][0].dtype == results[False][0].dtype == torch.float32
    for got, want in zip(results[True][:-1], results[False][:-1]):  # DyT output and parameter grads
        _assert_close_for_dtype(got, want)
    # The Linear's grad goes through a bf16 grad_x, rounded once by the kernel and once by autograd.
    torch.testing.assert_close(results[True][-1], results[False][-1], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("x_dtype", "param_dtype"),
    [(torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
     (torch.float32, torch.float64), (torch.float16, torch.bfloat16)],
)
def test_mixed_dtypes_match_reference_dtype_and_values(x_dtype, param_dtype):
    x = _x(True, x_dtype)
    params = [p.to(param_dtype) for p in _params("channel", "scalar")]
    got, want = _fused_and_reference(x, params, True, "tanh", torch.randn(x.shape))
    for g, w in zip(got, want):
        _assert_close_for_dtype(g, w)


@pytest.mark.parametrize("case", ["non_contiguous", "two_dim_channels_first", "empty", "two_threads"])
def test_layout_edge_cases_match_reference(case):
    channels_last = case != "two_dim_channels_first"
    x = {
        "non_contiguous": _x(False).transpose(1, -1),  # (3, 7, 5, C), channels strided
        "two_dim_channels_first": torch.randn(300, C, dtype=torch.float64),  # (N, C): one row per sample
        "empty": torch.randn(0, 4, C, dtype=torch.float64),
        "two_threads": torch.randn(500, C, dtype=torch.float64),
    }[case]
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if case == "two_threads" else threads)
    try:
        got, want = _fused_and_reference(x, _params("channel", "channel"), channels_last, "erf", torch.randn(x.shape))
    finally:
        torch.set_num_threads(threads)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_unsupported_dtype_warns_once_and_gives_reference(dtype, monkeypatch):
    monkeypatch.setattr(fused, "_warned", set())
    alpha, shift, weight, bias = (p.float() for p in _params("scalar", "scalar"))
    x = (torch.randn(4, C) * 3).to(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [dynamic_squash(x, alpha, shift, weight, bias, fused=True) for _ in range(2)]
    messages = [str(w.message) for w in caught if "fused DyT" in str(w.message)]
    assert len(messages) == 1 and str(dtype) in messages[0]
    for out in outs:
        torch.testing.assert_close(out, reference_dynamic_squash(x, alpha, shift, weight, bias))


@pytest.mark.slow
def test_missing_compiler_falls_back_to_pure_pytorch_with_one_warning(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setitem(cpu_kernel._state, "tried", False)  # as if this process had not built it yet
    monkeypatch.setitem(cpu_kernel._state, "reason", None)
    monkeypatch.setattr(fused, "_warned", set())
    x = _x(True, torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = [ShiftedDyT(C, alpha_init=0.9)(x) for _ in range(2)][0]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "no C++ compiler" in messages[0] and "/nonexistent/c++" in messages[0]
    assert y.grad_fn.name().endswith("DynamicSquashFunctionBackward")
    torch.testing.assert_close(y, ShiftedDyT(C, alpha_init=0.9, fused=False)(x))


@pytest.mark.slow
def test_import_and_construction_do_not_build_the_kernel():
    code = (
        "import sys, dyt_lab, dyt_lab.norms; dyt_lab.norms.DyT(8)\n"
        "print(sorted(m for m in sys.modules if m.startswith('dyt_lab.norms.') and ('kernel' in m or 'fused' in m)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_triton_kernels_in_the_interpreter_match_reference():
    pytest.importorskip("triton")  # the kernels and this check exist only where Triton does
    script = textwrap.dedent(
        """
        import torch
        from dyt_lab.norms import triton_kernel as tk
        from dyt_lab.norms.functional import reference_dynamic_squash as ref
        torch.manual_seed(0)
        cases = [(True, "tanh", 1, None, torch.float32), (True, "erf", 37, 1, torch.bfloat16),
                 (False, "tanh", 37, 37, torch.float32), (False, "erf", 1, 37, torch.float16)]
        for cl, sq, na, ns, dt in cases:
            x = (torch.randn((3, 5, 37) if cl else (3, 37, 5, 3)) * 2).to(dt).requires_grad_()
            a, w, b = (torch.rand(n) + 0.5 for n in (na, 37, 37))
            s = None if ns is None else torch.rand(ns) - 0.5
            ps = [p.requires_grad_() for p in (a, s, w, b) if p is not None]
            y = ref(x, a, s, w, b, cl, sq)
            g = torch.randn_like(y)
            want = torch.autograd.grad(y, [x, *ps], g)
            d = [None if p is None else p.detach() for p in (x, a, s, w, b)]
            y2 = tk.forward(*d, cl, sq, y.dtype)
            got = [t for t, p in zip(tk.backward(g, *d[:4], cl, sq), d) if p is not None]
            tol = dict(rtol=1e-2, atol=1e-2) if dt != torch.float32 else dict(rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(y2, y, **tol)
            for u, v in zip(got, want):
                torch.testing.assert_close(u, v, **tol)
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
