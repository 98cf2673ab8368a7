"""Batch-free building blocks, each against a formula written out here: weight standardisation, branch gains,
NF scaling, adaptive gradient clipping, per-sample centring, recipes, and a real fit and resume with one."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from tbparse import SummaryReader
from torch import nn

from dyt_lab.cli import main
from dyt_lab.errors import EXIT_CONFIG_ERROR, ConfigError
from dyt_lab.models import ResNet
from dyt_lab.models.alpha_rules import calibrate_alpha, dyt_sites
from dyt_lab.models.batch_free import BranchScale, ScaledStdConv2d
from dyt_lab.models.recipes import RECIPES
from dyt_lab.models.resnet import ResidualBlock
from dyt_lab.norms import DyT, PointwiseNorm, build_norm
from dyt_lab.runs import run_lightning
from dyt_lab.training import ResNetClassifier
from dyt_lab.training.checkpoints import conflicting_hyperparameters
from dyt_lab.training.clipping import AdaptiveGradientClipping
from tests.helpers import RESNET_DIGITS, ROOT, fit_args, last_line

TINY = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]


def blocks(model: ResNet) -> list[ResidualBlock]:
    return [m for m in model.modules() if isinstance(m, ResidualBlock)]


# --- scaled weight standardisation -----------------------------------------------------------------------

def test_a_standardised_conv_has_zero_mean_and_gain_over_sqrt_fan_in_per_output_channel():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(6, 5, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(torch.randn(5, 1, 1, 1) * 3)  # a scale and per-filter offsets to remove
        conv.gain.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1]))
    w = conv.standardized_weight().detach().double()
    fan_in = 6 * 3 * 3
    per_filter = w.reshape(5, -1)
    assert per_filter.mean(dim=1).abs().max() < 1e-6  # float32 rounding of values of about 0.1
    std = per_filter.std(dim=1, unbiased=False)  # population std, as the formula's
    assert torch.allclose(std * math.sqrt(fan_in), conv.gain.detach().double(), rtol=1e-5)
    # the layer convolves with exactly that weight
    x = torch.randn(2, 6, 7, 7)
    assert torch.allclose(conv(x), F.conv2d(x, w.float(), padding=1), atol=1e-5)


def test_weight_standardisation_puts_the_conv_in_every_site_and_keeps_gains_out_of_weight_decay():
    from dyt_lab.training import parameter_groups

    model = ResNet("resnet_tiny", num_classes=10, in_channels=1, weight_standardization=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, ScaledStdConv2d) for m in convs)  # stem, blocks and projections
    decayed = {id(p) for p in parameter_groups(model)[0]["params"]}
    assert all(id(m.gain) not in decayed and id(m.weight) in decayed for m in convs)
    plain = ResNet("resnet_tiny", num_classes=10, in_channels=1)
    assert not any(isinstance(m, ScaledStdConv2d) for m in plain.modules())


# --- branch gain (SkipInit) and NF alpha/beta ----------------------------------------------------------

@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_a_block_with_gain_zero_is_relu_of_its_shortcut(block):
    """The convention: block(x) = relu(gain * branch(x) + shortcut(x)); with gain 0 it is relu(shortcut(x)),
    which is x itself for an identity shortcut, since a block's input is a ReLU output (non-negative)."""
    torch.manual_seed(0)
    model = ResNet("resnet_tiny", num_classes=10, in_channels=1, block=block, layers=[2, 2], widths=[8, 16],
                   norm="dyt", branch_gain=0.0)
    checked = {"identity": 0, "projection": 0}
    for b in blocks(model):
        assert b.scale.gain.item() == 0.0 and b.scale.gain.requires_grad
        c_in = b.conv1.in_channels
        x = torch.relu(torch.randn(3, c_in, 6, 6))
        if b.downsample is None:
            assert torch.equal(b(x), x)
            checked["identity"] += 1
        else:
            assert torch.allclose(b(x), torch.relu(b.downsample(x)))
            checked["projection"] += 1
    assert checked["identity"] and checked["projection"]


def test_a_branch_gain_at_a_given_value_scales_the_branch():
    torch.manual_seed(0)
    model = ResNet("resnet_tiny", num_classes=10, in_channels=1, layers=[1], widths=[8], branch_gain=0.3)
    b = blocks(model)[0]
    x = torch.relu(torch.randn(2, 8, 5, 5))
    assert b.scale.gain.item() == pytest.approx(0.3)
    assert torch.allclose(b(x), torch.relu(0.3 * b.branch(x) + x), atol=1e-6)


def expected_nf_stds(projections: list[bool], alpha: float) -> list[float]:
    """NF-ResNets' bookkeeping written out: Var = 1 after the stem and after a projection, + alpha^2 per block."""
    stds, var = [], 1.0
    for projection in projections:
        stds.append(math.sqrt(var))
        var = (1.0 if projection else var) + alpha ** 2
    return stds


@pytest.mark.parametrize(("block", "layers"), [("basic", [2, 3, 2]), ("bottleneck", [3, 2])])
def test_nf_scaling_tracks_the_expected_variance_per_block(block, layers):
    alpha = 0.2
    model = ResNet("resnet_tiny", num_classes=10, in_channels=1, block=block, layers=layers,
                   widths=[8, 16, 32][:len(layers)], nf_alpha=alpha)
    bs = blocks(model)
    projections = [b.downsample is not None for b in bs]
    # basic: stage 1 keeps its width (no projection); bottleneck: every stage starts with one
    assert projections[0] == (block == "bottleneck") and sum(projections) == len(layers) - (block == "basic")
    assert [b.input_std for b in bs] == pytest.approx(expected_nf_stds(projections, alpha))
    assert bs[-1].input_std == pytest.approx(math.sqrt(1 + (layers[-1] - 1) * alpha ** 2))
    # the block computes relu(alpha * branch(x / beta) + shortcut), shortcut = x or projection(x / beta)
    torch.manual_seed(0)
    for b in bs:
        x = torch.relu(torch.randn(2, b.conv1.in_channels, 6, 6)) * 3
        inp = x / b.input_std
        shortcut = x if b.downsample is None else b.downsample(inp)
        assert b.scale.alpha == alpha and b.scale.gain is None
        assert torch.allclose(b(x), torch.relu(alpha * b.branch(inp) + shortcut), atol=1e-5)


def test_options_off_leave_the_model_as_it_was():
    model = ResNet("resnet18")
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's resnet18
    assert all(b.scale is None and b.input_std == 1.0 for b in blocks(model))
    assert BranchScale(1.0, None)(torch.ones(2)).tolist() == [1.0, 1.0]


# --- adaptive gradient clipping -------------------------------------------------------------------------

class TwoLayer(nn.Module):
    """A conv and a classifier head, as the clipping callback sees a dyt_lab network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=True)
        self.head = nn.Linear(3, 4)


def test_agc_clips_large_gradients_unit_wise_leaves_small_ones_and_never_the_classifier():
    torch.manual_seed(0)
    module = SimpleNamespace(net=TwoLayer())
    module.parameters = module.net.parameters
    conv, head = module.net.conv, module.net.head
    lam, eps = 0.1, 1e-3
    with torch.no_grad():
        conv.bias.zero_()  # a zero weight: its norm is floored at eps
    w = conv.weight.detach().clone()
    unit_norms = w.reshape(3, -1).norm(dim=1)  # (C_out,): ||W_i|| per output filter
    grad = torch.randn(3, 2, 3, 3)
    grad[0] *= 1e-4 / grad[0].norm()  # filter 0: far below lambda * ||W_0||: left alone
    grad[1] *= 10 * unit_norms[1] / grad[1].norm()  # filter 1: 100x lambda: clipped
    grad[2] *= 0.99 * lam * unit_norms[2] / grad[2].norm()  # filter 2: just below: left alone
    conv.weight.grad = grad.clone()
    conv.bias.grad = torch.full((3,), 1.0)  # the bias is one unit of norm sqrt(3), against max(0, eps)
    head.weight.grad = torch.full((4, 3), 1e3)
    head.bias.grad = torch.full((4,), 1e3)
    AdaptiveGradientClipping(clipping=lam, eps=eps).on_before_optimizer_step(None, module, None)
    # by hand: G_i * lambda * max(||W_i||, eps) / ||G_i|| where ||G_i|| / max(||W_i||, eps) > lambda
    expected = grad.clone()
    expected[1] = grad[1] * lam * unit_norms[1] / grad[1].norm()
    assert torch.allclose(conv.weight.grad, expected, rtol=1e-5)
    assert torch.equal(conv.weight.grad[0], grad[0]) and torch.equal(conv.weight.grad[2], grad[2])
    assert conv.weight.grad[1].norm() == pytest.approx(lam * unit_norms[1].item(), rel=1e-5)
    assert torch.allclose(conv.bias.grad, torch.full((3,), 1.0) * lam * eps / math.sqrt(3), rtol=1e-5)
    assert torch.equal(head.weight.grad, torch.full((4, 3), 1e3))  # the classifier is never clipped
    assert torch.equal(head.bias.grad, torch.full((4,), 1e3))


def test_agc_leaves_out_the_resnet_head_only():
    module = ResNetClassifier("resnet_tiny", num_classes=10, in_channels=1)
    clipped = {id(p) for p in AdaptiveGradientClipping.clipped_parameters(module)}
    names = [n for n, p in module.named_parameters() if id(p) not in clipped]
    assert names == ["net.head.weight", "net.head.bias"]


@pytest.mark.parametrize("value", [-0.01, 0.0, float("nan"), True])
def test_agc_refuses_a_lambda_that_is_not_positive(value):
    with pytest.raises(ConfigError, match="clipping \\(lambda\\) must be a finite number > 0"):
        AdaptiveGradientClipping(clipping=value)


# --- per-sample centring in the point-wise family ---------------------------------------------------------

@pytest.mark.parametrize("squash", ["tanh", "erf", "none"])
def test_per_sample_centring_has_zero_spatial_mean_per_sample_and_channel(squash):
    torch.manual_seed(0)
    norm = build_norm({"name": "dyt_general", "squash": squash, "center": "sample"}, 4, "channels_first")
    x = torch.randn(3, 4, 5, 6) * 2 + torch.arange(3.0).view(3, 1, 1, 1) * 10  # a different offset per sample
    centred = norm.squash_input(x)
    assert centred.mean(dim=(2, 3)).abs().max() < 1e-5
    assert torch.allclose(centred, x - x.mean(dim=(2, 3), keepdim=True))
    if squash == "none":  # weight 1, bias 0: the output is alpha * (x - mean_HW)
        assert norm(x).mean(dim=(2, 3)).abs().max() < 1e-5
    # batch-free: a sample's output is the same alone or in any batch, in training and in eval
    alone = norm(x[1:2])
    assert torch.allclose(norm(x)[1:2], alone, atol=1e-6) and torch.allclose(norm.eval()(x)[1:2], alone, atol=1e-6)


def test_per_sample_centring_over_tokens_and_the_pointwise_formula():
    torch.manual_seed(0)
    norm = PointwiseNorm(6, squash="erf", alpha="channel", shift="channel", center="sample", channels_last=True)
    with torch.no_grad():
        for p, v in [(norm.alpha, torch.rand(6) + 0.2), (norm.shift, torch.randn(6)), (norm.weight, torch.randn(6)),
                     (norm.bias, torch.randn(6))]:
            p.copy_(v)
    x = torch.randn(2, 7, 6)  # (N, T, C): the mean is over the 7 tokens
    centred = x - x.mean(dim=1, keepdim=True)
    expected = norm.weight * torch.erf(norm.alpha * centred + norm.shift) + norm.bias
    assert torch.allclose(norm(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="needs positions"):
        norm(torch.randn(4, 6))


def test_pointwise_defaults_are_dyt():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(build_norm("dyt_general", 4, "channels_first")(x), DyT(4, channels_last=False)(x))


# --- recipes and the alpha0 rule ----------------------------------------------------------------------

def test_the_bn_free_recipe_is_the_bundle_it_names_and_an_option_set_otherwise_wins():
    model = ResNet("resnet_tiny", num_classes=10, in_channels=1, recipe="bn_free")
    assert RECIPES["bn_free"]["norm"]["center"] == "sample" and model.alpha_rule == "data"
    sites = [model.get_submodule(s) for s in model.norm_sites()]
    assert sites and all(isinstance(m, PointwiseNorm) for m in sites)  # the searched winner: centred tanh
    assert all(isinstance(m, ScaledStdConv2d) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert all(b.scale is None for b in blocks(model))  # no branch gain, no NF scaling
    mine = ResNet("resnet_tiny", num_classes=10, in_channels=1, recipe="bn_free", norm="derf", branch_gain=0.5,
                  weight_standardization=False)
    assert type(mine.stem.norm).__name__ == "Derf" and blocks(mine)[0].scale.gain.item() == 0.5
    assert not any(isinstance(m, ScaledStdConv2d) for m in mine.modules())
    with pytest.raises(ConfigError, match=r"--model.recipe 'bn_fre': unknown recipe \(did you mean 'bn_free'\?\); "
                                          r"valid recipes: bn_free, nf_resnet"):
        ResNet("resnet_tiny", recipe="bn_fre")


@pytest.mark.parametrize("kw", [{}, {"nf_alpha": 0.2}])
def test_alpha_from_data_composes_with_the_batch_free_options(kw):
    """After calibration each DyT site's alpha * std(its input) is alpha_init: read again in a second pass."""
    torch.manual_seed(0)
    model = ResNet("resnet_tiny", num_classes=10, in_channels=1, recipe="bn_free", alpha_init=0.7,
                   norm={"name": "dyt_general", "center": "sample", "alpha": "channel"}, **kw)
    x = torch.randn(16, 1, 12, 12)
    calibrate_alpha(model, x)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, s=s: seen.__setitem__(s, a[0])) for s, m in dyt_sites(model).items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(seen) == len(model.norm_sites())
    for site, module in dyt_sites(model).items():
        z = module.squash_input(seen[site])
        std = z.transpose(0, 1).reshape(z.shape[1], -1).std(dim=1, unbiased=False)  # (C,): per-channel alpha
        assert torch.allclose(module.alpha.detach() * std, torch.full_like(std, 0.7), rtol=1e-4), site


@pytest.mark.parametrize(("kw", "message"), [
    ({"nf_alpha": -0.2}, "ResNet nf_alpha must be a finite number > 0"),
    ({"branch_gain": float("inf")}, "ResNet branch_gain must be a finite number"),
    ({"weight_standardization": "yes"}, "ResNet weight_standardization must be true or false"),
    ({"agc": -0.01}, "ResNet agc \\(the clipping lambda\\) must be a finite number > 0"),
])
def test_a_bad_option_is_one_config_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        ResNet("resnet_tiny", **kw)


def test_agc_or_a_recipe_with_agc_adds_the_clipping_callback():
    plain = ResNetClassifier("resnet_tiny", num_classes=10, in_channels=1, recipe="bn_free")
    assert plain.configure_callbacks() == []
    nf = ResNetClassifier("resnet_tiny", num_classes=10, in_channels=1, recipe="nf_resnet")
    (callback,) = nf.configure_callbacks()
    assert isinstance(callback, AdaptiveGradientClipping) and callback.clipping == RECIPES["nf_resnet"]["agc"]
    (mine,) = ResNetClassifier("resnet_tiny", num_classes=10, in_channels=1, recipe="nf_resnet",
                               agc=0.2).configure_callbacks()
    assert mine.clipping == 0.2


# --- real fits through the CLI -------------------------------------------------------------------------

def test_a_fit_with_the_bn_free_recipe_runs_and_resumes(tmp_path, monkeypatch):
    started = []  # the weight-standardisation gain of layer1.0's first conv (it starts at 1) when each fit starts
    monkeypatch.setattr(ResNetClassifier, "on_train_start", raising=False,
                        value=lambda self: started.append(self.net.layer1[0].conv1.gain[0].item()))
    first = run_lightning(fit_args(tmp_path, *TINY, "--model.recipe=bn_free", "--trainer.max_epochs=1",
                                   config=RESNET_DIGITS))
    assert first.trainer.state.finished and first.trainer.global_step == 2
    net = first.model.net
    assert net.alpha_rule == "data" and isinstance(net.stem.conv, ScaledStdConv2d)
    assert torch.isfinite(first.trainer.callback_metrics["train/loss"])
    run_dir = tmp_path / "resnet_bn_vs_dyt_digits" / "version_0"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["hyper_parameters"]["recipe"] == "bn_free"
    gain = last["state_dict"]["net.layer1.0.conv1.gain"].flatten()[0].item()
    assert "net.stem.conv.gain" in last["state_dict"] and gain != 1.0  # the gain has learned
    resumed = run_lightning(fit_args(tmp_path, *TINY, "--model.recipe=bn_free", "--trainer.max_epochs=2",
                                     "--ckpt_path=last", config=RESNET_DIGITS))
    assert resumed.trainer.global_step == 4 and resumed.trainer.current_epoch == 2
    assert started == [1.0, gain]  # the resume starts from it
    assert last["dyt_lab_alpha_calibrated"] is True  # so the resume keeps the checkpoint's alpha


def test_a_fit_with_agc_clips_through_the_callback(tmp_path, monkeypatch):
    calls = []
    real = AdaptiveGradientClipping.on_before_optimizer_step
    monkeypatch.setattr(AdaptiveGradientClipping, "on_before_optimizer_step",
                        lambda self, *a: (calls.append(self.clipping), real(self, *a)))
    cli = run_lightning(fit_args(tmp_path, *TINY, "--model.recipe=nf_resnet", "--trainer.max_epochs=1",
                                 config=RESNET_DIGITS))
    assert cli.trainer.global_step == 2 and calls == [0.01, 0.01]
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    cli = run_lightning(fit_args(tmp_path, *TINY, "--trainer.max_epochs=1",
                                 "--trainer.callbacks+=dyt_lab.training.clipping.AdaptiveGradientClipping",
                                 "--trainer.callbacks.clipping=0.05", config=RESNET_DIGITS))
    assert calls[2:] == [0.05, 0.05]


TESTBED = ROOT / "configs" / "experiments" / "bn_factors_mnist5k.yaml"  # sets norm (factored BN) and alpha_init 0.5


def test_a_recipe_over_a_config_names_the_key_that_blocks_it_and_records_what_it_used(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, *TINY, "--model.recipe=bn_free", config=TESTBED))
    assert exit_info.value.code == EXIT_CONFIG_ERROR and not (tmp_path / "bn_factors_mnist5k").exists()
    assert last_line(capsys.readouterr().err) == (
        "error: --model.recipe bn_free: the config sets model.norm ({name: factored, center: batch, scale: batch_std, "
        "squash: none}), which the recipe would replace (as set: alpha_rule 'data' needs a DyT-family norm at some "
        "site); give --model.norm null or drop it")
    run_lightning(fit_args(tmp_path, *TINY, "--trainer.max_epochs=1", "--model.recipe=bn_free", "--model.norm=null",
                           config=TESTBED))
    run_dir = tmp_path / "bn_factors_mnist5k" / "version_0"
    recipe = RECIPES["bn_free"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["init_args"]
    assert config["norm"] == recipe["norm"] and config["alpha_rule"] == "data" and config["weight_standardization"]
    assert config["alpha_init"] == 0.5  # the config's own wins over the recipe's 0.16, and the table says so
    hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
    assert {hparams[f"model.norm.{k}"] for k in ("name", "center", "shift")} == {"dyt_general", "sample", "scalar"}
    assert hparams["model.alpha_rule"] == "data" and hparams["model.weight_standardization"] is True
    reader = SummaryReader(str(run_dir))
    shown = dict(zip(reader.hparams["tag"], reader.hparams["value"]))  # the HParams tab's columns
    assert shown["model.norm"] == "dyt_general(squash=tanh, alpha=scalar, shift=scalar, center=sample)"
    table = (run_dir / "placement.txt").read_text()
    assert re.search(r"^stem\.norm +channels_first +dyt_general\(alpha_init=0\.5, shift=scalar, center=sample\)$",
                     table, re.M)
    assert "\nconvs: scaled weight standardisation" in table and "\nalpha0 rule: data" in table
    assert "\nrecipe: bn_free (found at lr 0.0105; the optimizer is the config's); the config's own: alpha_init 0.5 " \
           "(recipe: 0.16)" in table


def test_a_resolved_recipe_rebuilds_the_same_model_and_an_older_checkpoint_still_fits_its_config():
    model = ResNetClassifier("resnet_tiny", num_classes=10, in_channels=1, recipe="bn_free")
    assert model.hparams["norm"] == RECIPES["bn_free"]["norm"] and model.hparams["alpha_init"] == 0.16
    assert str(ResNetClassifier(**model.hparams).net) == str(model.net)  # resolving again changes nothing
    # a checkpoint saved before recipes were resolved holds the defaults the recipe replaced
    before = {**model.hparams, "_class_path": "dyt_lab.training.ResNetClassifier", "norm": "batchnorm",
              "alpha_rule": "constant", "alpha_init": None, "weight_standardization": None}
    config = {"class_path": "dyt_lab.training.ResNetClassifier", "init_args": dict(model.hparams)}
    assert conflicting_hyperparameters(config, {"hyper_parameters": before}) == []
    assert conflicting_hyperparameters(config, {"hyper_parameters": {**before, "recipe": None}}) == [
        "model.alpha_init=0.16 (checkpoint: None)", "model.alpha_rule=data (checkpoint: constant)",
        "model.norm={'name': 'dyt_general', 'squash': 'tanh', 'alpha': 'scalar', 'shift': 'scalar', 'center': 'sample'} "
        "(checkpoint: batchnorm)", "model.recipe=bn_free (checkpoint: None)",
        "model.weight_standardization=True (checkpoint: None)"]
