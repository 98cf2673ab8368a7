"""alpha0 rules: constant (unchanged), depth (alpha_init / sqrt(k)), data (alpha_init / std of each site's input)."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from dyt_lab.errors import ConfigError
from dyt_lab.models import ResNet, ViT, format_placement
from dyt_lab.models.alpha_rules import calibrate_alpha
from dyt_lab.norms import DYT_FAMILY
from dyt_lab.runs import run_lightning
from dyt_lab.training import ResNetClassifier
from tests.helpers import RESNET_DIGITS, ROOT, digits_resnet, digits_vit, fit_args

# one site of each kind: BatchNorm (keeps buffers), scalar DyT, per-channel alpha, centered, erf
MIXED_RESNET = {"stem": "batchnorm", "layer2.*.norm1": "dyt_channel_alpha", "layer2.0.downsample.norm": "derf",
                "layer3.*.norm2": {"name": "dyt_centered", "alpha_init": 1.5}}


# This file's models: DyT at every site (the ResNet at alpha0 0.7), built from seed 0.
_resnet = functools.partial(digits_resnet, seed=0, norm="dyt", alpha_init=0.7)
_vit = functools.partial(digits_vit, seed=0, norm="dyt")


def _dyt(model) -> dict:
    return {site: model.get_submodule(site) for site in model.norm_sites()
            if isinstance(model.get_submodule(site), DYT_FAMILY)}


def test_constant_is_the_default_and_changes_nothing():
    default, constant = _resnet(rules=MIXED_RESNET), _resnet(rules=MIXED_RESNET, alpha_rule="constant")
    for (name, a), b in zip(default.state_dict().items(), constant.state_dict().values()):
        assert torch.equal(a, b), name
    alphas = {site: m.alpha.detach() for site, m in _dyt(constant).items()}
    assert torch.equal(alphas["layer3.0.norm2"], torch.tensor([1.5]))  # the spec's own alpha_init
    assert alphas["layer2.0.norm1"].shape == (32,) and bool((alphas["layer2.0.norm1"] == 0.7).all())
    assert all(bool((a == 0.7).all()) for site, a in alphas.items() if site != "layer3.0.norm2")
    assert "alpha0 rule" not in format_placement(constant)
    assert not hasattr(constant.get_submodule("layer1.0.norm1"), "alpha_rule")


def test_depth_scales_each_site_by_one_over_sqrt_of_its_block_index():
    model = _resnet("resnet20", rules=MIXED_RESNET, alpha_rule="depth")  # 3 stages of 3 blocks
    for site, module in _dyt(model).items():
        stage, block = site.split(".")[:2]
        k = 1 if stage == "stem" else 3 * (int(stage[-1]) - 1) + int(block) + 1
        alpha0 = 1.5 if site.startswith("layer3") and site.endswith("norm2") else 0.7
        expected = torch.full_like(module.alpha, alpha0 / math.sqrt(k))
        torch.testing.assert_close(module.alpha.detach(), expected, msg=site)
        assert module.alpha_init == pytest.approx(alpha0 / math.sqrt(k))
    assert model.get_submodule("layer3.2.norm1").alpha.item() == pytest.approx(0.7 / 3)  # k = 9
    assert isinstance(model.get_submodule("stem.norm"), torch.nn.BatchNorm2d)
    table = format_placement(model)
    assert "layer2.0.downsample.norm  channels_first  derf(alpha_init=0.35)" in table  # 0.7 / sqrt(4)
    assert table.splitlines()[-1].startswith("alpha0 rule: depth: alpha0 = alpha_init / sqrt(k)")


def test_depth_in_a_vit_gives_the_final_norm_the_last_blocks_index():
    model = _vit(alpha_rule="depth", alpha_init=0.8)  # 4 blocks
    alphas = {site: m.alpha.item() for site, m in _dyt(model).items()}
    assert alphas["blocks.0.norm1"] == pytest.approx(0.8) and alphas["blocks.3.norm2"] == pytest.approx(0.4)
    assert alphas["blocks.2.norm1"] == pytest.approx(0.8 / math.sqrt(3)) and alphas["norm"] == pytest.approx(0.4)


def _inputs_by_plain_hooks(model, x) -> dict[str, torch.Tensor]:
    """Each DyT site's input in one more forward pass of ``x``, read by plain pre-hooks."""
    seen = {}
    handles = [m.register_forward_pre_hook(lambda m, args, site=site: seen.__setitem__(site, args[0].detach()))
               for site, m in _dyt(model).items()]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


def _std(module, x) -> torch.Tensor:
    """What alpha multiplies, measured again: population std overall, per channel, and centered for dyt_centered."""
    if not module.channels_last:
        x = x.movedim(1, -1)  # (N, C, H, W) -> (N, H, W, C)
    x = x.reshape(-1, x.shape[-1])  # (rows, C)
    if module.__class__.__name__ == "CenteredDyT":
        x = x - x.mean(dim=0)
    if module.alpha.numel() > 1:
        return ((x - x.mean(dim=0)) ** 2).mean(dim=0).sqrt()  # (C,)
    return ((x - x.mean()) ** 2).mean().sqrt().reshape(1)


@pytest.mark.parametrize("build", [
    lambda: _resnet(rules=MIXED_RESNET, alpha_rule="data"),
    lambda: _vit(alpha_rule="data", alpha_init=0.6, dropout=0.2, drop_path=0.2,
                 rules={"blocks.1.*": "dyt_channel_alpha", "blocks.2.norm2": "dyt_shift"}),
], ids=["resnet", "vit"])
@pytest.mark.parametrize("scale", [1.0, 0.5])  # 0.5: a stand-in for the mean over DDP ranks
def test_data_sets_alpha_times_the_inputs_std_to_alpha_init(build, scale):
    model = build().train()
    x = 3.0 * torch.randn(16, 1, 8, 8) + 1.0  # not unit scale, so alpha must move from alpha_init
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    rng = torch.get_rng_state()
    stds = calibrate_alpha(model, x, reduce=lambda t: t * scale)
    assert list(stds) == list(_dyt(model))  # every DyT site, in forward order
    for name, buffer in model.named_buffers():  # BatchNorm's running stats, dyt_centered's mean, the counters
        assert torch.equal(buffer, buffers[name]), name
    assert torch.equal(torch.get_rng_state(), rng)  # dropout draws were not consumed
    # the same batch again, with the same random draws: each site's input, after its upstream sites' new alpha
    inputs = _inputs_by_plain_hooks(model, x)
    for site, module in _dyt(model).items():
        product = module.alpha.detach() * _std(module, inputs[site]) * scale
        torch.testing.assert_close(product, torch.full_like(product, module.alpha_init), rtol=1e-4, atol=0,
                                   msg=site)
        assert not torch.allclose(module.alpha.detach(), torch.full_like(module.alpha, module.alpha_init)), site
    assert format_placement(model).splitlines()[-1].startswith("alpha0 rule: data: alpha = alpha_init / std")


def test_a_dead_input_keeps_its_alpha():
    model = _resnet(alpha_rule="data")
    calibrate_alpha(model, torch.zeros(4, 1, 8, 8))  # stem conv of zeros: every std is 0
    assert all(m.alpha.item() == pytest.approx(0.7) for m in _dyt(model).values())


@pytest.mark.parametrize(("build", "message"), [
    (lambda: _resnet(alpha_rule="stage"), "unknown alpha_rule 'stage'; valid choices: constant, depth, data"),
    (lambda: ResNet("resnet_tiny", alpha_rule="data"), "alpha_rule 'data' needs a DyT-family norm at some site"),
    (lambda: ViT("vit_digits", norm="dyt", placement="final", rules={"final": "layernorm"}, alpha_rule="depth"),
     "alpha_rule 'depth' needs a DyT-family norm"),
])
def test_a_rule_that_cannot_apply_is_one_config_error(build, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build()


class CountCalibrations:
    """Wraps calibrate_alpha where the LightningModule calls it, counting the calls."""

    def __init__(self, monkeypatch) -> None:
        import dyt_lab.training.calibration as calibration

        self.calls, self.real = 0, calibration.calibrate_alpha
        monkeypatch.setattr(calibration, "calibrate_alpha", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.real(*args, **kwargs)


def test_a_fit_calibrates_once_at_the_first_step_and_a_resume_never(tmp_path, monkeypatch):
    counter = CountCalibrations(monkeypatch)
    tiny = ["--model.alpha_rule=data", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.accumulate_grad_batches=2"]  # two batches at global step 0: still one calibration
    first = run_lightning(fit_args(tmp_path, *tiny, "--trainer.max_epochs=1", config=RESNET_DIGITS))
    assert counter.calls == 1 and first.trainer.global_step == 1
    run_dir = tmp_path / "resnet_bn_vs_dyt_digits" / "version_0"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["dyt_lab_alpha_calibrated"] is True
    assert abs(last["state_dict"]["net.layer3.0.norm1.alpha"].item() - 0.5) > 0.1  # calibrated, not alpha_init
    assert "alpha0 rule: data" in (run_dir / "placement.txt").read_text()
    resumed = run_lightning(fit_args(tmp_path, *tiny, "--trainer.max_epochs=2", "--ckpt_path=last",
                                     config=RESNET_DIGITS))
    assert resumed.trainer.global_step == 2 and counter.calls == 1  # resumed: alpha is the checkpoint's


def _classifier_at_step_zero(**kw) -> ResNetClassifier:
    module = ResNetClassifier("resnet_tiny", num_classes=10, in_channels=1, norm="dyt", **kw)
    module._trainer = SimpleNamespace(global_step=0, strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
    return module


def test_the_checkpoint_flag_stops_a_recalibration_even_at_step_zero(monkeypatch):
    counter = CountCalibrations(monkeypatch)
    batch = [torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)]
    fresh = _classifier_at_step_zero(alpha_rule="data")
    fresh.on_train_batch_start(batch, 0)
    fresh.on_train_batch_start(batch, 1)
    assert counter.calls == 1
    checkpoint = {}
    fresh.on_save_checkpoint(checkpoint)
    assert checkpoint["dyt_lab_alpha_calibrated"] is True  # beside the model class every checkpoint names
    for saved in (checkpoint, {}):  # this one's flag, and a checkpoint from before alpha rules
        resumed = _classifier_at_step_zero(alpha_rule="data")
        resumed.on_load_checkpoint(saved)
        resumed.on_train_batch_start(batch, 0)
    assert counter.calls == 1
    _classifier_at_step_zero().on_train_batch_start(batch, 0)  # constant: nothing to calibrate
    assert counter.calls == 1


@pytest.mark.slow
def test_ddp_ranks_measure_different_batches_and_start_from_the_same_alpha(tmp_path):
    # Two CPU processes (gloo); each rank sees its own shard, so only the mean over ranks makes them agree.
    args = fit_args(tmp_path / "runs", "--model.alpha_rule=data", "--trainer.accelerator=cpu", "--trainer.devices=2",
                    "--trainer.strategy=ddp", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                    "--trainer.limit_val_batches=1", "--trainer.callbacks+=tests.multinode_probe.RankRecord",
                    f"--trainer.callbacks.out_dir={tmp_path / 'ranks'}", config=RESNET_DIGITS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore",
           "MPLCONFIGDIR": str(tmp_path / ".mpl")}
    done = subprocess.run([sys.executable, "-m", "dyt_lab", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=False)["state_dict"] for r in (0, 1)]
    alphas = [key for key in ranks[0] if key.endswith(".alpha")]
    assert len(alphas) == 9
    for key in alphas:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        assert abs(ranks[0][key].item() - 0.5) > 0.1, key  # calibrated (alpha_init 0.5, input std well below 1)
