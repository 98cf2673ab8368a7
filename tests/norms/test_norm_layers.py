"""Every layer against its formula, in both layouts: values, gradients, init, state, copies."""

import copy
import math

import pytest
import torch
from torch.autograd import gradcheck

from dyt_lab.norms import (
    DYT_FAMILY,
    NORMS,
    CenteredDyT,
    ChannelAlphaDyT,
    ChannelShiftDyT,
    Derf,
    DyT,
    LayerNorm2d,
    PointwiseNorm,
    RMSNorm2d,
    ShiftedDyT,
    TokenBatchNorm,
    available_norms,
    build_norm,
)
from dyt_lab.norms.functional import reference_dynamic_squash

C = 6


def _input(channels_last: bool, dtype=torch.float64) -> torch.Tensor:
    shape = (3, 5, C) if channels_last else (3, C, 4, 2)
    return torch.randn(shape, dtype=dtype) * 2


def _bc(p: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Broadcast a (C,) or (1,) parameter explicitly, written independently of the library."""
    if p.numel() == 1:
        return p.reshape(())
    return p if channels_last else p[None, :, None, None]


def _randomize(layer: torch.nn.Module) -> None:
    """Move every parameter off its init so a swapped alpha/weight/shift would show."""
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand_like(p) + 0.5)


def _formula(layer, x):
    cl = layer.channels_last
    z = _bc(layer.alpha, cl) * x
    if layer.shift is not None:
        z = z + _bc(layer.shift, cl)
    s = torch.erf(z) if isinstance(layer, Derf) else torch.tanh(z)
    return _bc(layer.weight, cl) * s + _bc(layer.bias, cl)


@pytest.mark.parametrize("cls", [c for c in DYT_FAMILY if c is not CenteredDyT])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_dyt_family_matches_formula(cls, channels_last, fused):
    layer = cls(C, alpha_init=0.7, channels_last=channels_last, fused=fused).double()
    _randomize(layer)
    x = _input(channels_last)
    torch.testing.assert_close(layer(x), _formula(layer, x))


@pytest.mark.parametrize("cls", DYT_FAMILY)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_dyt_family_gradcheck(cls, channels_last, fused):
    layer = cls(C, channels_last=channels_last, fused=fused).double()
    _randomize(layer)
    x = _input(channels_last).requires_grad_()
    names = [n for n in ("alpha", "shift", "weight", "bias") if getattr(layer, n) is not None]

    def run(x, *params):  # gradcheck differentiates w.r.t. its inputs, so params are passed in
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    inputs = (x, *[getattr(layer, n).detach().clone().requires_grad_() for n in names])
    assert gradcheck(run, inputs, eps=1e-6, atol=1e-5)


def test_init_values():
    for cls in DYT_FAMILY:
        layer = cls(C, alpha_init=1.5)
        expected_alpha = C if cls is ChannelAlphaDyT else 1
        assert layer.alpha.shape == (expected_alpha,)
        assert torch.all(layer.alpha == 1.5)
        assert torch.all(layer.weight == 1) and layer.weight.shape == (C,)
        assert torch.all(layer.bias == 0) and layer.bias.shape == (C,)
        if cls in (ShiftedDyT, Derf):
            assert layer.shift.shape == (1,) and layer.shift.item() == 0
        elif cls is ChannelShiftDyT:
            assert layer.shift.shape == (C,) and torch.all(layer.shift == 0)
        else:
            assert layer.shift is None
    assert DyT(C).alpha.item() == 0.5 and Derf(C).alpha.item() == 0.5


def test_extra_repr_shows_shape_alpha_and_layout():
    assert repr(DyT(7, alpha_init=0.25, channels_last=False)) == "DyT(7, alpha_init=0.25, channels_first)"


@pytest.mark.parametrize("channels_last", [True, False])
def test_centered_dyt_train_and_eval(channels_last):
    layer = CenteredDyT(C, alpha_init=0.5, channels_last=channels_last, momentum=0.1).double()
    x = _input(channels_last) + 3.0  # a large per-channel offset, which centering must remove
    channel_dim = -1 if channels_last else 1
    dims = [d for d in range(x.dim()) if d != x.dim() + channel_dim and d != channel_dim]
    batch_mean = x.mean(dim=dims)
    y = layer(x)
    torch.testing.assert_close(y, torch.tanh(0.5 * (x - _bc(batch_mean, channels_last))))
    torch.testing.assert_close(layer.running_mean, 0.1 * batch_mean)

    layer.eval()
    running = layer.running_mean.clone()
    y_eval = layer(x)
    torch.testing.assert_close(y_eval, torch.tanh(0.5 * (x - _bc(running, channels_last))))
    torch.testing.assert_close(layer.running_mean, running)  # eval does not update


def test_centered_dyt_output_is_centered_in_train_mode_only():
    layer = CenteredDyT(C, alpha_init=0.01, channels_last=False).double()
    x = _input(False) + 10.0
    assert layer(x).mean().abs() < 0.01  # tanh is ~linear at alpha 0.01, so the mean is ~0
    layer.eval()
    assert layer(x).mean() > 0.05  # the running mean has only moved 10% towards 10


def test_layernorm2d_and_rmsnorm2d_match_channels_last_versions():
    x = torch.randn(2, C, 3, 4)
    ln = torch.nn.LayerNorm(C, eps=1e-6)
    ln2d = LayerNorm2d(C, eps=1e-6)
    torch.testing.assert_close(ln2d(x), ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    rms2d = RMSNorm2d(C)
    expected = x / torch.sqrt(x.pow(2).mean(dim=1, keepdim=True) + torch.finfo(x.dtype).eps)
    torch.testing.assert_close(rms2d(x), expected)


def test_token_batchnorm_uses_statistics_over_batch_and_tokens():
    x = torch.randn(4, 9, C) * 3 + 1
    y = TokenBatchNorm(C)(x)
    flat = x.reshape(-1, C)
    expected = (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(y.reshape(-1, C), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "layout"),
    [(n, layout) for n in available_norms() for layout in NORMS[n].layouts],
)
def test_state_dict_round_trip_and_deepcopy(name, layout):
    a = build_norm(name, C, layout).double()
    for p in a.parameters():
        torch.nn.init.uniform_(p, 0.5, 1.5)
    x = _input(layout == "channels_last")
    a.train()
    a(x)  # move running statistics where there are any
    b = build_norm(name, C, layout).double()
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x))
    c = copy.deepcopy(a)
    torch.testing.assert_close(c(x), a(x))
    assert all(p1 is not p2 for p1, p2 in zip(a.parameters(), c.parameters()))


def test_fused_matches_reference_in_float32():
    x = torch.randn(8, 17, 32)
    layer = ShiftedDyT(32, alpha_init=0.8)
    _randomize(layer)
    ref = reference_dynamic_squash(x, layer.alpha, layer.shift, layer.weight, layer.bias, True, "tanh")
    torch.testing.assert_close(layer(x), ref, atol=1e-6, rtol=1e-6)


def test_derf_is_erf_not_tanh():
    layer = Derf(C, alpha_init=1.0)
    x = torch.full((1, C), 0.5)
    assert math.isclose(layer(x)[0, 0].item(), math.erf(0.5), rel_tol=1e-6)


@pytest.mark.parametrize("cls", [c for c in DYT_FAMILY if c is not PointwiseNorm])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_every_named_norm_is_dyt_general_at_its_preset(cls, channels_last, fused):
    layout = "channels_last" if channels_last else "channels_first"
    named = cls(C, alpha_init=0.7, channels_last=channels_last, fused=fused)
    general = build_norm({"name": "dyt_general", **cls.preset, "alpha_init": 0.7, "fused": fused}, C, layout)
    _randomize(named)
    general.load_state_dict(named.state_dict())  # strict: the same names and shapes
    for _ in range(2):
        x = _input(channels_last, torch.float32)
        assert torch.equal(named(x), general(x))
    named.eval(), general.eval()
    assert torch.equal(named(x), general(x)) and torch.equal(named.squashed(x), general.squashed(x))


def test_checkpoint_names_of_the_named_norms():
    """The parameter and buffer names old checkpoints were saved under."""
    expected = {
        "dyt": ["alpha", "weight", "bias"], "dyt_shift": ["alpha", "shift", "weight", "bias"],
        "dyt_channel_shift": ["alpha", "shift", "weight", "bias"], "dyt_channel_alpha": ["alpha", "weight", "bias"],
        "derf": ["alpha", "shift", "weight", "bias"], "dyt_centered": ["alpha", "weight", "bias", "running_mean"],
        "dyt_general": ["alpha", "weight", "bias"],
    }
    for name, keys in expected.items():
        assert list(build_norm(name, C, "channels_first").state_dict()) == keys, name
    keys = list(build_norm({"name": "factored", "center": "batch", "scale": "alpha_channel", "squash": "tanh"}, C,
                           "channels_last").state_dict())
    assert keys == ["alpha", "weight", "bias", "running_mean", "num_batches_tracked"]
