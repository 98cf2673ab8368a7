"""FactoredNorm: the known points equal BN, DyT, CenteredDyT and an affine; the new points equal their formulas."""

import itertools
import math

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call
from torch.testing import assert_close

from dyt_lab.models import ResNet
from dyt_lab.norms import LAYOUTS, NORMS, FactoredNorm, NormError, build_norm, choices_of, norm_name

CENTERS, SCALES, SQUASHES = (choices_of("factored")[option] for option in ("center", "scale", "squash"))

C = 6
EPS = 1e-5
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _x(layout: str, dtype=torch.float32) -> torch.Tensor:
    """A batch with a per-channel offset, so centering matters: (4, 5, C) tokens or (4, C, 3, 2) maps."""
    shape = (4, 5, C) if layout == "channels_last" else (4, C, 3, 2)
    return torch.randn(shape, dtype=dtype) * 2 + _bc(torch.linspace(-1, 2, C, dtype=dtype), layout)


def _bc(v: torch.Tensor, layout: str) -> torch.Tensor:
    """A (C,) vector broadcast along the channel dim, written independently of the library."""
    return v if layout == "channels_last" else v[None, :, None, None]


def _dims(layout: str) -> tuple[int, ...]:
    return (0, 1) if layout == "channels_last" else (0, 2, 3)


def _factored(layout: str, center: str, scale: str, squash: str, **options) -> FactoredNorm:
    spec = {"name": "factored", "center": center, "scale": scale, "squash": squash, **options}
    return build_norm(spec, C, layout)


def _randomize(layer: nn.Module) -> nn.Module:
    """Give the affine (and alpha) non-trivial values, so a wrong broadcast cannot hide."""
    with torch.no_grad():
        layer.weight.copy_(torch.rand(C) + 0.5)
        layer.bias.copy_(torch.randn(C))
        if getattr(layer, "alpha", None) is not None:
            layer.alpha.copy_(torch.rand(layer.alpha.shape) + 0.3)
    return layer


def _assert_same(ours: nn.Module, ref: nn.Module, layout: str, steps: int = 3) -> None:
    """Outputs, input and parameter gradients, running statistics: train for ``steps``, then eval."""
    for _ in range(steps):
        x = _x(layout)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours(x1), ref(x2)
        assert_close(y1, y2)
        grad = torch.randn_like(y1)
        y1.backward(grad)
        y2.backward(grad)
        assert_close(x1.grad, x2.grad)
        ref_params = dict(ref.named_parameters())
        for name, p in ours.named_parameters():
            assert_close(p.grad, ref_params[name].grad)
    ref_buffers = dict(ref.named_buffers())
    for name, buf in ours.named_buffers():
        if name in ref_buffers:
            assert_close(buf, ref_buffers[name])
    ours.eval()
    ref.eval()
    x = _x(layout)
    assert_close(ours(x), ref(x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_batch_std_none_is_batchnorm(layout):
    ref = _randomize(nn.BatchNorm2d(C) if layout == "channels_first" else build_norm("batchnorm", C, layout))
    ours = _factored(layout, "batch", "batch_std", "none")
    ours.load_state_dict(ref.state_dict())  # strict: the same names, so BN checkpoints load
    _assert_same(ours, ref, layout)
    assert set(dict(ours.named_buffers())) == set(BUFFERS)
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 3


@pytest.mark.parametrize("layout", LAYOUTS)
def test_none_alpha_tanh_is_dyt(layout):
    ref = _randomize(build_norm("dyt", C, layout))
    ours = _factored(layout, "none", "alpha", "tanh")
    ours.load_state_dict(ref.state_dict())  # alpha (1,), weight, bias and no buffers, as DyT
    assert not list(ours.buffers())
    _assert_same(ours, ref, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_alpha_tanh_is_dyt_centered(layout):
    ref = _randomize(build_norm("dyt_centered", C, layout))
    ours = _factored(layout, "batch", "alpha", "tanh")
    result = ours.load_state_dict(ref.state_dict(), strict=False)
    assert result.missing_keys == ["num_batches_tracked"] and not result.unexpected_keys
    _assert_same(ours, ref, layout)
    assert ours.running_var is None


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("center", "scale", "squash"),
                         list(itertools.product(CENTERS, ("alpha", "alpha_channel"), SQUASHES)))
def test_every_alpha_point_is_the_dyt_family_to_the_bit(center, scale, squash, fused, layout):
    """factored's DyT points are dyt_general with the same center, alpha and squash: same state, same numbers."""
    alpha = "scalar" if scale == "alpha" else "channel"
    family = build_norm({"name": "dyt_general", "center": center, "alpha": alpha, "squash": squash, "fused": fused},
                        C, layout)
    ours = _factored(layout, center, scale, squash, fused=fused)
    assert norm_name(family) == "dyt_general"
    result = ours.load_state_dict(_randomize(family).state_dict(), strict=False)
    assert not result.unexpected_keys and result.missing_keys == (["num_batches_tracked"] if center == "batch" else [])
    for _ in range(2):
        x = _x(layout)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours(x1), family(x2)
        y1.sum().backward(), y2.sum().backward()
        assert torch.equal(y1, y2) and torch.equal(x1.grad, x2.grad)
        assert all(torch.equal(p.grad, dict(family.named_parameters())[n].grad) for n, p in ours.named_parameters())
    assert center == "none" or torch.equal(ours.running_mean, family.running_mean)
    ours.eval(), family.eval()
    x = _x(layout)
    assert torch.equal(ours(x), family(x)) and torch.equal(ours.squash_argument(x), family.squash_argument(x))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_none_none_none_is_affine(layout):
    ours = _randomize(_factored(layout, "none", "none", "none"))
    assert not list(ours.buffers()) and ours.alpha is None
    for training in (True, False):
        ours.train(training)
        x = _x(layout)
        assert_close(ours(x), _bc(ours.weight, layout) * x + _bc(ours.bias, layout))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batchnorm_then_tanh(layout):
    ours = _randomize(_factored(layout, "batch", "batch_std", "tanh"))
    w, b, dims = _bc(ours.weight, layout), _bc(ours.bias, layout), _dims(layout)
    x = _x(layout)
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    assert_close(ours(x), w * torch.tanh((x - mean) / torch.sqrt(var + EPS)) + b)
    assert_close(ours.running_mean, 0.1 * mean.flatten())
    assert_close(ours.running_var, 0.9 + 0.1 * x.var(dims, unbiased=True).flatten())
    ours.eval()
    x = _x(layout)
    rm, rv = _bc(ours.running_mean, layout), _bc(ours.running_var, layout)
    assert_close(ours(x), w * torch.tanh((x - rm) / torch.sqrt(rv + EPS)) + b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_center_only(layout):
    ours = _randomize(_factored(layout, "batch", "none", "none", momentum=0.25))
    w, b, dims = _bc(ours.weight, layout), _bc(ours.bias, layout), _dims(layout)
    assert ours.running_var is None and ours.running_mean is not None
    x = _x(layout)
    assert_close(ours(x), w * (x - x.mean(dims, keepdim=True)) + b)
    assert_close(ours.running_mean, 0.25 * x.mean(dims))
    ours.eval()
    x = _x(layout)
    assert_close(ours(x), w * (x - _bc(ours.running_mean, layout)) + b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scale_only_divides_by_the_uncentered_second_moment(layout):
    ours = _randomize(_factored(layout, "none", "batch_std", "none"))
    w, b, dims = _bc(ours.weight, layout), _bc(ours.bias, layout), _dims(layout)
    assert ours.running_mean is None
    x = _x(layout)
    second = x.square().mean(dims, keepdim=True)  # E[x^2], not the variance: nothing is centered
    assert_close(ours(x), w * x / torch.sqrt(second + EPS) + b)
    assert_close(ours.running_var, 0.9 + 0.1 * second.flatten())  # E[x^2] needs no Bessel correction
    ours.eval()
    x = _x(layout)
    assert_close(ours(x), w * x / torch.sqrt(_bc(ours.running_var, layout) + EPS) + b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_running_std_divides_by_the_running_var_in_training(layout):
    ours = _randomize(_factored(layout, "batch", "running_std", "none"))
    w, b, dims = _bc(ours.weight, layout), _bc(ours.bias, layout), _dims(layout)
    rv0 = torch.rand(C) + 0.5
    ours.running_var.copy_(rv0)
    x = _x(layout)
    centered = x - x.mean(dims, keepdim=True)
    assert_close(ours(x), w * centered / torch.sqrt(_bc(rv0, layout) + EPS) + b)  # the var before the update
    assert_close(ours.running_var, 0.9 * rv0 + 0.1 * x.var(dims, unbiased=True))
    assert_close(ours.running_mean, 0.1 * x.mean(dims))
    frozen = _factored(layout, "batch", "running_std", "none", momentum=0.0)
    assert_close(frozen(3 * x), 3 * frozen(x))  # no batch std inside: scaling the batch scales the output


@pytest.mark.parametrize("layout", LAYOUTS)
def test_running_std_without_center_tracks_the_second_moment(layout):
    ours = _factored(layout, "none", "running_std", "tanh")
    x = _x(layout)
    assert_close(ours(x), torch.tanh(x / math.sqrt(1 + EPS)))  # running_var starts at 1
    assert_close(ours.running_var, 0.9 + 0.1 * x.square().mean(_dims(layout)))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_alpha_channel_erf(layout):
    ours = _factored(layout, "none", "alpha_channel", "erf", alpha_init=0.3)
    assert ours.alpha.shape == (C,) and torch.all(ours.alpha == 0.3)
    _randomize(ours)
    w, b, a = _bc(ours.weight, layout), _bc(ours.bias, layout), _bc(ours.alpha, layout)
    x = _x(layout)
    assert_close(ours(x), w * torch.erf(a * x) + b)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("center", "scale", "squash"), list(itertools.product(CENTERS, SCALES, SQUASHES)))
def test_every_combination_builds_and_runs(center, scale, squash, layout):
    layer = _factored(layout, center, scale, squash, alpha_init=0.7)
    buffers = {"running_mean"} if center == "batch" else set()
    buffers |= {"running_var"} if scale in ("batch_std", "running_std") else set()
    buffers |= {"num_batches_tracked"} if buffers else set()
    assert set(dict(layer.named_buffers())) == buffers
    alpha_shape = {"alpha": (1,), "alpha_channel": (C,)}.get(scale)
    assert (layer.alpha is None) if alpha_shape is None else (layer.alpha.shape == alpha_shape)
    x = _x(layout)
    y = layer(x)
    y.sum().backward()
    assert y.shape == x.shape and torch.isfinite(y).all() and layer.weight.grad is not None
    layer.eval()
    assert torch.isfinite(layer(x)).all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    ("center", "scale", "squash"),
    [("batch", "batch_std", "tanh"), ("batch", "alpha_channel", "erf"), ("none", "running_std", "none")],
)
def test_gradcheck(center, scale, squash, training, layout):
    layer = _randomize(_factored(layout, center, scale, squash, momentum=0.0)).double().train(training)
    names, params = zip(*layer.named_parameters())
    x = _x(layout, torch.float64)[:2].requires_grad_()

    def run(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert gradcheck(run, (x, *(p.detach().clone().requires_grad_() for p in params)))


def test_builds_from_a_yaml_like_spec():
    spec = {"name": "factored", "center": "batch", "scale": "alpha", "squash": "tanh"}
    layer = build_norm(spec, 8, "channels_first")
    assert isinstance(layer, FactoredNorm) and norm_name(layer) == "factored"
    assert layer.channels_last is False and layer.alpha.shape == (1,) and layer.running_var is None
    assert NORMS["factored"].options() == ["center", "scale", "squash", "alpha_init", "eps", "momentum", "fused"]
    from dyt_lab.norms.table import norms_table

    row = next(line for line in norms_table().splitlines() if line.startswith("| `factored`"))
    assert "squash(s * (x - m))" in row and "center, scale, squash, alpha_init, eps, momentum" in row


@pytest.mark.parametrize(
    ("norm", "alpha"),
    [({"name": "factored", "center": "batch", "scale": "alpha", "squash": "tanh"}, 0.3),
     ({"name": "factored", "scale": "batch_std", "squash": "erf"}, None)],
)
def test_resnet_with_factored_norms(norm, alpha):
    model = ResNet(preset="resnet_tiny", num_classes=10, in_channels=1, norm=norm, alpha_init=0.3)
    stem = model.get_submodule("stem.norm")
    assert isinstance(stem, FactoredNorm) and stem.alpha_init == 0.3  # the model-wide alpha_init arrives
    assert stem.alpha is None if alpha is None else stem.alpha.item() == pytest.approx(alpha)
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"scale": "std"}, "scale must be one of none, batch_std, running_std, alpha, alpha_channel; got 'std'"),
        ({"center": "mean"}, "center must be one of none, batch; got 'mean'"),
        ({"squash": "relu"}, "squash must be one of none, tanh, erf; got 'relu'"),
        ({"squash": None}, "squash must be one of none, tanh, erf; got None"),
        ({"momentum": 1.5}, "momentum must be in [0, 1], got 1.5"),
        ({"eps": -1.0}, "eps must be a finite number >= 0, got -1.0"),
        ({"alpha_init": math.nan}, "alpha_init must be a finite number, got nan"),
        ({"shift": 0.0}, "unknown option 'shift' for norm 'factored'; valid options: center, scale, squash, "
                         "alpha_init, eps, momentum"),
    ],
)
def test_bad_options_get_one_clear_line(options, expected):
    with pytest.raises(NormError) as err:
        build_norm({"name": "factored", **options}, C, "channels_last")
    message = str(err.value)
    assert "\n" not in message and expected in message and "factored" in message


def test_one_value_per_channel_in_training_is_refused_as_batchnorm_does():
    layer = _factored("channels_last", "batch", "batch_std", "none")
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, C))
    layer.eval()
    assert layer(torch.randn(1, C)).shape == (1, C)


@pytest.mark.parametrize("stored", ["contiguous", "channels_last"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("center", "scale", "squash"), list(itertools.product(CENTERS, SCALES, SQUASHES)))
def test_library_kernels_give_the_written_formula(center, scale, squash, layout, stored):
    """``fused`` (F.batch_norm, the DyT kernel) against ``fused=False``: outputs, gradients and running
    statistics over three training steps, then eval, for feature maps stored NCHW and channels-last."""
    written, fused = (_factored(layout, center, scale, squash, fused=f) for f in (False, True))
    x = _x(layout)
    if stored == "channels_last" and layout == "channels_first":
        x = x.contiguous(memory_format=torch.channels_last)
    for layer in (written, fused):
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 2.0, C))
    inputs = [x.clone().requires_grad_() for _ in range(2)]
    for _ in range(3):
        outputs = [layer(xi) for layer, xi in zip((written, fused), inputs)]
    grad = torch.randn_like(outputs[0])
    for out in outputs:
        (out * grad).sum().backward()
    assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    assert_close(inputs[1].grad, inputs[0].grad, rtol=1e-4, atol=1e-5)
    for (name, p_written), p_fused in zip(written.named_parameters(), fused.parameters()):
        assert_close(p_fused.grad, p_written.grad, rtol=1e-4, atol=1e-4, msg=name)
    for (name, b_written), b_fused in zip(written.named_buffers(), fused.buffers()):
        assert_close(b_fused, b_written, rtol=1e-5, atol=1e-6, msg=name)
    written.eval(), fused.eval()
    assert_close(fused(x), written(x), rtol=1e-5, atol=1e-5)
