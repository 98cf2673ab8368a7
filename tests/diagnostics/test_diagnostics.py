"""Norm diagnostics: hooks on every site, statistics by hand, TensorBoard logs, probe files, bad input."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from matplotlib.image import imread
from tbparse import SummaryReader
from torch import nn

from dyt_lab.cli import main
from dyt_lab.diagnostics import NormDiagnostics, SiteError, run_probe
from dyt_lab.diagnostics.sites import spread_out
from dyt_lab.models import ResNet, ViT, sites_of
from dyt_lab.norms import CenteredDyT, DyT, ShiftedDyT
from dyt_lab.runs import run_lightning
from tests.helpers import QUICKSTART, RESNET_DIGITS, fit_args

BLANK = 0.005  # pixel variance (values in [0, 1]) below which a PNG counts as blank; a white one has 0
SHORT = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1"]


def _hooked_modules(net: nn.Module) -> list[str]:
    return [name for name, m in net.named_modules() if m._forward_hooks or m._forward_pre_hooks]


@pytest.mark.parametrize(("family", "norm"), [(ViT, "layernorm"), (ViT, "dyt_shift"), (ResNet, "batchnorm"),
                                              (ResNet, "dyt_channel_alpha"), (ResNet, "dyt_centered")])
def test_hooks_see_every_site_of_both_families_and_are_removed(family, norm):
    preset = "vit_digits" if family is ViT else "resnet_tiny"
    net = family(preset, num_classes=10, in_channels=1, norm=norm, placement="all" if family is ViT else "stage2")
    probes = run_probe(net, torch.randn(6, 1, 8, 8), sites_of(net), max_points=50)
    assert list(probes) == list(net.norm_sites())  # every site, in forward order
    kinds = {p.stats.kind for p in probes.values()}
    assert norm in kinds and (family is ViT or "batchnorm" in kinds)  # ResNet: stage2 gets norm, the rest BN
    assert all(len(p.x) == len(p.y) == len(p.channel) == 50 for p in probes.values())
    assert _hooked_modules(net) == [] and net.training  # hooks gone, train mode restored


def _probe_one(module: nn.Module, x: torch.Tensor, layout: str, **kwargs):
    return run_probe(nn.Sequential(module), x, {"0": layout}, max_points=1000, **kwargs)["0"]


# Channel 0 holds 1, 3, 1, 3 (mean 2, std 1); channel 1 holds -2, -2, 2, 2 (mean 0, std 2).
# All eight: mean 1, variance 36/8 - 1 = 3.5. Shape (N=2, C=2, H=1, W=2).
KNOWN = torch.tensor([[[[1.0, 3.0]], [[-2.0, -2.0]]], [[[1.0, 3.0]], [[2.0, 2.0]]]])


def test_input_statistics_match_hand_computed_values():
    stats = _probe_one(DyT(2, alpha_init=1.0, channels_last=False), KNOWN, "channels_first").stats
    std = math.sqrt(3.5)
    assert stats.input_std == pytest.approx(std)
    assert stats.mean_offset == pytest.approx((2 / std + 0 / std) / 2)
    assert stats.channel_std_spread == pytest.approx(0.5 / 1.5)  # std of (1, 2) over their mean
    assert stats.max_abs == 3.0 and stats.channel_offsets == pytest.approx([2 / std, 0.0])
    assert stats.saturation == pytest.approx(2 / 8)  # |1 * x| > 2: the two 3s
    assert stats.alpha == 1.0 and math.isnan(stats.divisor)

    shifted = ShiftedDyT(2, alpha_init=1.0, channels_last=False)
    with torch.no_grad():
        shifted.shift.fill_(0.5)
    assert _probe_one(shifted, KNOWN, "channels_first").stats.saturation == pytest.approx(4 / 8)  # 3.5 x2, 2.5 x2


def test_norm_statistics_use_running_or_batch_statistics():
    bn = nn.BatchNorm2d(2, eps=1e-12)  # running mean 0, var 1: in eval mode the output is the input
    eval_stats = _probe_one(bn, KNOWN, "channels_first").stats
    assert eval_stats.kind == "batchnorm" and eval_stats.saturation == pytest.approx(2 / 8)
    assert eval_stats.divisor == pytest.approx(1.0) and eval_stats.scale == pytest.approx(1.0)

    probe = _probe_one(bn, KNOWN, "channels_first", batch_stats=True)  # batch: means (2, 0), stds (1, 2)
    assert probe.stats.divisor == pytest.approx(1.5) and probe.stats.scale == pytest.approx(0.75)
    assert probe.stats.divisor_spread == pytest.approx(1 / 3) and probe.stats.saturation == 0.0
    assert sorted(probe.y.tolist()) == pytest.approx([-1.0] * 4 + [1.0] * 4)
    assert bn.running_var.tolist() == [1.0, 1.0] and bn.num_batches_tracked.item() == 0  # restored
    assert bn.training  # and its mode

    tokens = torch.tensor([[[1.0, 3.0], [-2.0, 2.0]]])  # (B=1, T=2, C=2): per-token std 1 and 2
    ln = _probe_one(nn.LayerNorm(2, eps=0.0), tokens, "channels_last")
    assert ln.stats.divisor == pytest.approx(1.5) and ln.stats.scale == pytest.approx(0.75)
    assert ln.y.tolist() == pytest.approx([-1.0, 1.0, -1.0, 1.0]) and ln.channel.tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize("cls", [DyT, CenteredDyT])
def test_dyt_points_are_the_output_before_the_affine(cls):
    module = cls(4, alpha_init=0.7, channels_last=False)
    with torch.no_grad():
        module.weight.uniform_(0.5, 2.0)
        module.bias.uniform_(-1.0, 1.0)
        if cls is CenteredDyT:
            module.running_mean.uniform_(-1.0, 1.0)
    x = torch.randn(3, 4, 2, 2)
    probe = _probe_one(module, x, "channels_first")
    expected = module.eval().squashed(x).movedim(1, -1).reshape(-1, 4)  # (N * H * W, C) rows
    assert probe.y.tolist() == pytest.approx(expected.flatten().tolist(), abs=1e-6)
    assert probe.x.tolist() == pytest.approx(x.movedim(1, -1).flatten().tolist())


class HookSpy(Callback):
    """Records whether any module of the network carries a forward hook while a training step runs."""

    def __init__(self) -> None:
        self.hooked: list[str] = []
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps += 1
        self.hooked += _hooked_modules(pl_module)


def _raw_images(save_dir) -> dict[str, list]:
    """Image summaries of the run's event file, tag -> events (tbparse's decoded view needs TensorFlow)."""
    event_file = next((save_dir / "quickstart" / "version_0").glob("events.out.tfevents.*"))
    return SummaryReader(str(event_file), pivot=False).get_raw_events("images")


def _fit_with(tmp_path, callbacks_yaml: str, *extra: str):
    config = tmp_path / "callbacks.yaml"
    config.write_text(callbacks_yaml)
    return run_lightning(fit_args(tmp_path, "--config", str(config), *SHORT, "--model.depth=1", *extra))


def test_fit_logs_alpha_statistics_and_figures_to_tensorboard(tmp_path, monkeypatch):
    registered = []
    original = nn.Module.register_forward_hook
    monkeypatch.setattr(nn.Module, "register_forward_hook",
                        lambda self, *a, **k: registered.append(self) or original(self, *a, **k))
    cli = _fit_with(tmp_path, """
trainer:
  callbacks:
    - class_path: dyt_lab.diagnostics.NormDiagnostics
      init_args: {alpha_every_n_steps: 2, stats_every_n_epochs: 1, curves_every_n_epochs: 2, max_points: 300}
    - class_path: tests.diagnostics.test_diagnostics.HookSpy
""", "--model.norm=dyt_channel_alpha", "--model.placement=attn")
    spy = next(c for c in cli.trainer.callbacks if type(c).__name__ == "HookSpy")  # imported by class path
    assert spy.steps == 8 and spy.hooked == []  # no hook during any training step
    assert len(registered) == 2 * 3  # one probe pass per epoch, three sites each

    reader = SummaryReader(str(tmp_path / "quickstart" / "version_0"), pivot=False)
    scalars = reader.scalars
    tags = set(scalars["tag"])
    for suffix in ("alpha", "alpha_min", "alpha_max", "input_std", "mean_offset", "channel_std_spread",
                   "max_abs", "saturation"):
        assert f"norms/blocks.0.norm1/{suffix}" in tags, suffix
    assert {"norms/blocks.0.norm2/divisor", "norms/norm/scale", "norms/norm/divisor_spread"} <= tags  # LN sites
    assert "norms/blocks.0.norm2/alpha" not in tags and "norms/blocks.0.norm1/divisor" not in tags
    alpha_steps = scalars[scalars["tag"] == "norms/blocks.0.norm1/alpha"]["step"].tolist()
    assert alpha_steps == [0, 2, 4, 6, 8]
    assert scalars[scalars["tag"] == "norms/norm/input_std"]["step"].tolist() == [4, 8]
    images = _raw_images(tmp_path)
    assert sorted(images) == ["diagnostics/gain_vs_inv_std", "diagnostics/s_curves"]
    assert [event.step for event in images["diagnostics/s_curves"]] == [8]
    picture = imread(io.BytesIO(images["diagnostics/s_curves"][0].encoded_image_string), format="png")
    assert picture.shape[0] > 300 and np.var(picture[..., :3]) > BLANK  # a figure with content


def test_diagnostics_off_installs_no_hook_and_logs_nothing(tmp_path, monkeypatch):
    registered = []
    monkeypatch.setattr(nn.Module, "register_forward_hook", lambda self, *a, **k: registered.append(self))
    _fit_with(tmp_path, """
trainer:
  callbacks:
    - class_path: dyt_lab.diagnostics.NormDiagnostics
      init_args: {alpha_every_n_steps: 0, stats_every_n_epochs: 0, curves_every_n_epochs: 0}
""")
    assert registered == []
    reader = SummaryReader(str(tmp_path / "quickstart" / "version_0"), pivot=False)
    assert not any(tag.startswith("norms/") for tag in reader.scalars["tag"]) and _raw_images(tmp_path) == {}


def test_unknown_site_pattern_stops_fit_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, *SHORT, "--model.depth=1", "--trainer.callbacks+=dyt_lab.diagnostics.NormDiagnostics",
                      "--trainer.callbacks.sites=[blocks.*.norm1, blocks.9.*]"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: diagnostics site pattern 'blocks.9.*' matches no norm site; "
        "valid sites: blocks.0.norm1, blocks.0.norm2, norm")


def test_site_patterns_select_sites():
    model = ViT("vit_digits", num_classes=10, in_channels=1, depth=1)
    with pytest.raises(SiteError, match=r"pattern 'blocks\.9\.\*' matches no norm site; valid sites: "
                                        r"blocks\.0\.norm1, blocks\.0\.norm2, norm$"):
        NormDiagnostics(sites=["blocks.*.norm1", "blocks.9.*"]).setup(None, model, "fit")
    callback = NormDiagnostics(sites=["blocks.*.norm1"])
    callback.setup(None, model, "fit")
    assert list(callback.sites) == ["blocks.0.norm1"]
    assert spread_out(list("abcdefghij"), 4) == ["a", "d", "g", "j"]  # figure grids keep first and last


@pytest.fixture(scope="module")
def bn_checkpoint(tmp_path_factory):
    """A ResNet-BN checkpoint from a short fit of the embedded-data experiment."""
    save_dir = tmp_path_factory.mktemp("runs")
    run_lightning(fit_args(save_dir, *SHORT[1:], "--trainer.max_epochs=1", "--model.norm=batchnorm",
                           config=RESNET_DIGITS))
    return save_dir / "resnet_bn_vs_dyt_digits" / "version_0" / "checkpoints" / "last.ckpt"


def _read_csv(path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _assert_pngs_not_blank(out) -> None:
    for name in ("s_curves.png", "gain_vs_inv_std.png", "stats.png"):
        pixels = imread(out / name)
        assert pixels.shape[0] > 300 and np.var(pixels[..., :3]) > BLANK, name


@pytest.mark.slow
def test_probe_compares_a_checkpoint_with_a_fresh_model(tmp_path, bn_checkpoint, capsys):
    out = tmp_path / "probe"
    main(["probe", "--ckpt_path", str(bn_checkpoint), "--compare", str(RESNET_DIGITS),
          "--compare_set", "model.norm=dyt", "--sites", "stem.norm", "layer3.*", "--num_points", "400",
          "--out", str(out)])
    _assert_pngs_not_blank(out)
    rows = _read_csv(out / "stats.csv")
    sites = ["stem.norm", "layer3.0.norm1", "layer3.0.norm2", "layer3.0.downsample.norm"]
    assert [r["site"] for r in rows] == sites + sites  # one row per site, for each run
    assert {r["run"] for r in rows} == {"ResNet batchnorm, epoch 1", "ResNet dyt, untrained"}
    assert {r["kind"] for r in rows[:len(sites)]} == {"batchnorm"} and rows[-1]["alpha"] == "0.5"
    # The trained weights were loaded: stem.norm's gain is the mean 1/sqrt(running_var + eps) saved in the file.
    state = torch.load(bn_checkpoint, weights_only=True)["state_dict"]
    assert float(rows[0]["gain"]) == pytest.approx((state["net.stem.norm.running_var"] + 1e-5).rsqrt().mean().item(),
                                                   rel=1e-5)
    printed = capsys.readouterr().out
    assert "layer3.0.downsample.norm" in printed and "wrote" in printed


@pytest.mark.slow
def test_probe_on_a_fresh_vit(tmp_path):
    out = tmp_path / "probe"
    main(["probe", "--config", str(QUICKSTART), "--set", "model.depth=1", "--sites", "blocks.*", "--out", str(out)])
    _assert_pngs_not_blank(out)
    rows = _read_csv(out / "stats.csv")
    assert [r["site"] for r in rows] == ["blocks.0.norm1", "blocks.0.norm2"] and rows[0]["alpha"] == "0.5"


def _probe_error(capsys, *args: str) -> tuple[str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1], "\n".join(err)


@pytest.mark.slow
def test_probe_bad_input_is_one_clear_line(tmp_path, bn_checkpoint, capsys):
    out = ["--out", str(tmp_path / "probe")]
    line, _ = _probe_error(capsys, "--ckpt_path", str(bn_checkpoint), "--config", str(QUICKSTART), *out)
    assert line.startswith(f"error: checkpoint '{bn_checkpoint}' does not match the config's model: missing key ")
    line, err = _probe_error(capsys, "--config", str(QUICKSTART), "--compare", str(RESNET_DIGITS), *out)
    assert "note: comparing a ViT with a ResNet" in err
    assert line == "error: --compare: the ViT and the ResNet share no site names; nothing to compare"
    line, _ = _probe_error(capsys, "--config", str(QUICKSTART), "--sites", "layer9.*", *out)
    assert line.startswith("error: diagnostics site pattern 'layer9.*' matches no norm site; valid sites: blocks.0")


@pytest.mark.slow
def test_probe_compares_only_the_shared_sites(tmp_path, capsys):
    out = tmp_path / "probe"
    main(["probe", "--config", str(QUICKSTART), "--set", "model.depth=2",  # the second run: same config, and
          "--compare_set", "model.depth=1", "--compare_set", "model.norm=layernorm", "--out", str(out)])
    assert "note: the runs differ in sites: only their 3 shared site names are compared" in capsys.readouterr().err
    rows = _read_csv(out / "stats.csv")
    assert [r["site"] for r in rows] == ["blocks.0.norm1", "blocks.0.norm2", "norm"] * 2


def test_factored_sites_report_their_argument_saturation_and_gain_as_the_named_norms_do():
    from dyt_lab.diagnostics.stats import as_rows, pre_affine, site_stats
    from dyt_lab.norms import FactoredNorm, build_norm

    x = torch.randn(8, 4, 5, 5) * 3 + 1
    dyt = build_norm({"name": "dyt", "alpha_init": 0.7}, 4, "channels_first").eval()
    point = FactoredNorm(4, channels_last=False, center="none", scale="alpha", squash="tanh", alpha_init=0.7).eval()
    rows = as_rows(x, "channels_first")
    a, b = pre_affine(dyt, x, rows, dyt(x), "channels_first"), pre_affine(point, x, rows, point(x), "channels_first")
    torch.testing.assert_close(a.argument, b.argument)  # the DyT point of factored is seen as DyT is
    assert site_stats("s", point, rows, b).saturation == pytest.approx(float((0.7 * rows).abs().gt(2).float().mean()))
    assert site_stats("s", point, rows, b).gain == pytest.approx(0.7)
    bn = FactoredNorm(4, channels_last=False).train()
    for _ in range(20):  # let the running statistics settle
        bn(x)
    bn.eval()
    stats = site_stats("s", bn, rows, pre_affine(bn, x, rows, bn(x), "channels_first"))
    assert stats.gain == pytest.approx(float((bn.running_var + bn.eps).rsqrt().mean()), rel=1e-4)  # 1 / its std
