"""dyt_general's squashes, the point-wise functions of the Derf paper's search: each against the paper's
formula in both layouts, gradients by gradcheck away from kinks and at u = 0, the table, bad input, and
the study file that runs them all in a ResNet."""

import math
import warnings

import pytest
import torch

from dyt_lab.norms import NormError, PointwiseNorm, build_norm, choices_of, functional, fused
from tests.helpers import ROOT

NAMES = list(functional.SQUASHES)


def _log_ratio(u):
    log_term = torch.log(u.abs() + 1)
    return torch.sign(u) * log_term / (log_term + 1)


# The paper's formulas as written (arXiv 2512.10938), independent of the implementations under test.
PAPER = {
    "tanh": torch.tanh,
    "erf": torch.erf,
    "arctan": lambda u: 2 / math.pi * torch.atan(u),
    "isru": lambda u: u / torch.sqrt(u**2 + 1),
    "relsign": lambda u: u / (torch.sqrt(u**2 + 1) + 1),
    "smoothsign": lambda u: u / (1 + u.abs()),
    "smoothsign_clip": lambda u: torch.clip(u / (1 + u.abs()), -1, 1),
    "cubsign": lambda u: u**3 / (u.abs() ** 3 + 1),
    "expsign": lambda u: torch.sign(u) * (1 - torch.exp(-u.abs())),
    "exproot": lambda u: torch.sign(u) * (1 - torch.exp(-torch.sqrt(u.abs()))),
    "linear_clip": lambda u: torch.clip(u, -1, 1),
    "logquad_clip": lambda u: torch.clip(torch.sign(u) * torch.log(u**2 + 1), -1, 1),
    "logsign_clip": lambda u: torch.clip(torch.sign(u) * torch.log(u.abs() + 1), -1, 1),
    "power23_clip": lambda u: torch.clip(torch.sign(u) * u.abs() ** (2 / 3), -1, 1),
    "saturlog": _log_ratio,
    "satursin": lambda u: torch.sin(torch.clip(u, -math.pi / 2, math.pi / 2)),
    "none": lambda u: u,
}
# d squash / du at u = 0. exproot's and power23_clip's true slope is +inf there: 0 is the convention.
SLOPE_AT_0 = {"tanh": 1.0, "erf": 2 / math.sqrt(math.pi), "arctan": 2 / math.pi, "isru": 1.0, "relsign": 0.5,
              "smoothsign": 1.0, "smoothsign_clip": 1.0, "cubsign": 0.0, "expsign": 1.0, "exproot": 0.0,
              "linear_clip": 1.0, "logquad_clip": 0.0, "logsign_clip": 1.0, "power23_clip": 0.0, "saturlog": 1.0,
              "satursin": 1.0, "none": 1.0}
# Values of u at least 0.07 from every kink: 0 (sqrt, 2/3 power), 1 (clips), 1.31 (logquad), 1.57
# (satursin), 1.72 (logsign); gradcheck's steps of 1e-6 in x, alpha or shift move u by far less.
SAFE_U = [0.07, 0.2, 0.45, 0.7, 1.15, 1.45, 2.2, 3.1]
SHAPES = {True: (2, 3, 4), False: (2, 4, 2, 3)}  # channels-last tokens (N, T, C); channels-first maps (N, C, H, W)


def _layer(squash: str, channels_last: bool, **kw) -> PointwiseNorm:
    """A float64 dyt_general with non-trivial alpha, shift, weight and bias."""
    layer = PointwiseNorm(4, squash=squash, shift="scalar", channels_last=channels_last, fused=False, **kw).double()
    with torch.no_grad():
        layer.alpha.fill_(0.8)
        layer.shift.fill_(0.1)
        layer.weight.copy_(torch.tensor([1.5, -0.7, 0.9, 2.0]))
        layer.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 0.5]))
    return layer


def _affine(s: torch.Tensor, layer: PointwiseNorm) -> torch.Tensor:
    w, b = layer.weight.detach(), layer.bias.detach()
    if not layer.channels_last:
        w, b = w[:, None, None], b[:, None, None]
    return s * w + b


def test_one_home_for_the_names():
    family_squashes = choices_of("dyt_general")["squash"]
    assert family_squashes == tuple(functional.SQUASHES) == tuple(functional.SQUASH_FORMULAS) == tuple(PAPER)
    assert set(choices_of("factored")["squash"]) <= set(functional.SQUASHES)  # factored's are the family's
    assert fused.FUSED_SQUASHES == ("tanh", "erf")


@pytest.mark.parametrize("channels_last", [True, False], ids=["tokens", "maps"])
@pytest.mark.parametrize("squash", NAMES)
def test_layer_computes_the_paper_formula(squash, channels_last):
    layer = _layer(squash, channels_last)
    x = torch.randn(SHAPES[channels_last], dtype=torch.float64) * 3
    x.view(-1)[:3] = torch.tensor([0.0, -0.125, 40.0])  # u = 0.1; u = -0.1 + 0.1 = 0 exactly; u saturated
    expected = _affine(PAPER[squash](0.8 * x + 0.1), layer)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("squash", NAMES)
def test_squash_stays_finite_and_bounded_at_float32_extremes(squash):
    u = torch.tensor([-3e38, -1e30, -1e13, -50.0, -1e-30, -0.0, 0.0, 1e-45, 1e-30, 50.0, 1e13, 1e30, 3e38],
                     requires_grad=True)
    out = functional.SQUASHES[squash](u)
    out.sum().backward()
    out = out.detach()
    assert torch.isfinite(out).all() and torch.isfinite(u.grad).all()
    if squash != "none":  # arctan's (2/pi) * float32(pi/2) may round one ulp above 1: the paper's formula does too
        assert out.abs().max() <= 1 + 1e-7
        # saturlog nears 1 only as fast as log grows: L / (L + 1) with L = log(3e38) = 88.6
        assert out[-1] == pytest.approx(0.9888, abs=1e-4) if squash == "saturlog" else out[-1] == pytest.approx(1.0)
    assert torch.isnan(functional.SQUASHES[squash](torch.tensor([float("nan")]))).all()  # a NaN is never hidden


@pytest.mark.parametrize("channels_last", [True, False], ids=["tokens", "maps"])
@pytest.mark.parametrize("squash", NAMES)
def test_gradients_match_finite_differences_away_from_kinks(squash, channels_last):
    shape = SHAPES[channels_last]
    n = math.prod(shape)
    signs = torch.tensor([1.0, -1.0]).repeat(n)[:n]
    u = torch.tensor(SAFE_U, dtype=torch.float64).repeat(n)[torch.randperm(n)] * signs[torch.randperm(n)]
    x = ((u - 0.1) / 0.8).reshape(shape).requires_grad_()
    layer = _layer(squash, channels_last)
    params = [p.detach().clone().requires_grad_() for p in (layer.alpha, layer.shift, layer.weight, layer.bias)]

    def fn(x, alpha, shift, weight, bias):
        return functional.reference_dynamic_squash(x, alpha, shift, weight, bias, channels_last, squash)

    assert torch.autograd.gradcheck(fn, (x, *params))


@pytest.mark.parametrize("channels_last", [True, False], ids=["tokens", "maps"])
@pytest.mark.parametrize("squash", NAMES)
def test_gradient_at_u_zero_is_the_slope_or_the_convention(squash, channels_last):
    """u = 0 exactly is common in a ResNet (a patch of ReLU zeros into a bias-free conv, the shift at 0)."""
    for shift in ("scalar", "none"):  # -0.0 inputs stay -0.0 without a shift: u = -0.0 too
        layer = _layer(squash, channels_last) if shift == "scalar" else PointwiseNorm(
            4, squash=squash, channels_last=channels_last, fused=False, alpha_init=0.8).double()
        if shift == "scalar":
            with torch.no_grad():
                layer.shift.zero_()
        x = torch.zeros(SHAPES[channels_last], dtype=torch.float64)
        x.view(-1)[::2] = -0.0
        x.requires_grad_()
        out = layer(x)
        torch.testing.assert_close(out, _affine(torch.zeros_like(x), layer))
        out.sum().backward()
        grads = [x.grad] + [p.grad for p in layer.parameters()]
        assert all(torch.isfinite(g).all() for g in grads)
        expected = _affine(torch.full_like(x, SLOPE_AT_0[squash]), layer) - _affine(torch.zeros_like(x), layer)
        torch.testing.assert_close(x.grad, layer.alpha.detach() * expected, rtol=1e-12, atol=1e-12)


def test_infinite_slopes_near_zero_stay_finite_and_large():
    u = torch.tensor([1e-12, 1e-8, -1e-8], dtype=torch.float64, requires_grad=True)
    for squash in ("exproot", "power23_clip"):
        u.grad = None
        functional.SQUASHES[squash](u).sum().backward()
        assert torch.isfinite(u.grad).all() and (u.grad > 100).all()


@pytest.mark.parametrize("squash", [n for n in NAMES if n not in fused.FUSED_SQUASHES])
def test_unfused_squashes_run_eager_without_a_warning(squash):
    x = torch.randn(2, 4, 3, 3)
    ref = PointwiseNorm(4, squash=squash, channels_last=False, fused=False)
    layer = PointwiseNorm(4, squash=squash, channels_last=False)  # fused=True: the default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(layer(x), ref(x))
    assert fused.try_fused(x, ref.alpha, None, ref.weight, ref.bias, False, squash) is None


def test_norms_table_lists_every_squash_with_its_formula():
    from dyt_lab.norms.table import norms_table

    table = norms_table()
    general = next(line for line in table.splitlines() if line.startswith("| `dyt_general`"))
    assert "squash: " + ", ".join(NAMES) + ";" in general
    for name, formula in functional.SQUASH_FORMULAS.items():
        fused_cell = "yes" if name in ("tanh", "erf") else "no (eager)"
        assert f"| `{name}` | `{formula}` | {fused_cell} |" in table
    assert all(line.count("|") == 4 for line in table.splitlines()[-len(NAMES):])  # no stray pipe in a cell


@pytest.mark.parametrize("squash", ["tanhh", "Linear_Clip", 3, {"name": "linear_clip", "max": 2.0}])
def test_a_squash_that_is_not_one_gets_one_line_naming_the_valid_ones(squash):
    with pytest.raises(NormError) as err:
        build_norm({"name": "dyt_general", "squash": squash}, 4, "channels_first")
    message = str(err.value)
    assert "\n" not in message and "squash must be one of" in message and ", ".join(NAMES) in message


def test_the_zoo_study_has_an_arm_per_function_and_batchnorm(monkeypatch):
    from dyt_lab.study.definition.samplers import make_pruner
    from dyt_lab.study.definition.study_file import arm_specs, load_spec

    monkeypatch.chdir(ROOT)
    spec = load_spec(["--config", "configs/study/pointwise_zoo.yaml"])
    # smoothsign_clip is smoothsign exactly (the file says why): its arm would replay smoothsign's runs
    assert set(spec.arms) == {"batchnorm", *NAMES} - {"smoothsign_clip"}
    arms = {s.study_name.split(".", 1)[1]: s for s in arm_specs(spec)}
    assert arms["batchnorm"].base.overrides["model.norm"] == "batchnorm"
    for name, arm in arms.items():
        assert set(spec.search_space) <= set(arm.search_space)  # every arm searches the shared keys alike
        if name != "batchnorm":
            assert arm.base.overrides["model.norm.squash"] == name
            assert arm.base.overrides["model.norm.center"] == "none" and arm.base.overrides["model.alpha_rule"] == "data"
            assert arm.base.overrides["model.weight_standardization"] is True
            assert arm.search_space["model.alpha_init"] == arms["tanh"].search_space["model.alpha_init"]
    assert type(make_pruner(spec.pruner)).__name__ == "HyperbandPruner"
