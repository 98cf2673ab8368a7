"""timm and torchvision models from the command line, their norms swapped by --model.convert."""

from __future__ import annotations

import csv
import re

import pytest
import torch
import yaml
from tbparse import SummaryReader
from torch import nn

from dyt_lab.cli import main
from dyt_lab.errors import ConfigError
from dyt_lab.models import TimmModel, TorchvisionModel
from dyt_lab.norms import DyT
from dyt_lab.norms.convert import NormConversion
from dyt_lab.runs import run_lightning
from dyt_lab.training import ImageClassifier, ResNetClassifier
from tests.helpers import ROOT, fit_args, last_line, run_cli

TIMM_RESNET = ROOT / "configs" / "model" / "timm_resnet18.yaml"
TIMM_VIT = ROOT / "configs" / "model" / "timm_vit_tiny.yaml"
TIMM_EXPERIMENT = ROOT / "configs" / "experiments" / "timm_resnet18_bn_vs_dyt_digits.yaml"
ONE_STEP = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
# resnet18 at 1/4 of its width (0.7M parameters, not 11M): the subprocess tests write a checkpoint
# every epoch, and resnet18's is 130 MB with AdamW's state. The sites and their names are resnet18's.
NARROW = "{channels: [16, 32, 64, 128]}"
# timm's own class injected by class path, as the README shows it (a small one: the test builds it twice)
VIT_CLASS = {"model": {"class_path": "dyt_lab.training.ImageClassifier", "init_args": {"net": {
    "class_path": "timm.models.vision_transformer.VisionTransformer",
    "init_args": {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 32, "depth": 2,
                  "num_heads": 2}}}}}


def assert_only_converted_changed(net: nn.Module, reference: nn.Module, converted: list[str],
                                  old_type: type, channels_last: bool) -> None:
    """Every converted site was an ``old_type`` and is a DyT in its layout; every other module kept its type."""
    before, after = dict(reference.named_modules()), dict(net.named_modules())
    assert after.keys() == before.keys()
    for name, module in before.items():
        if name in converted:
            assert isinstance(module, old_type) and type(after[name]) is DyT, name
            assert after[name].channels_last == channels_last, name
        else:
            assert type(after[name]) is type(module), name


@pytest.mark.parametrize("source", ["shipped TimmModel config", "timm class injected by class_path"])
def test_a_timm_vit_with_dyt_from_a_config_trains_one_step(tmp_path, source):
    if source == "shipped TimmModel config":
        config = TIMM_VIT
        reference = TimmModel("vit_tiny_patch16_224", {"patch_size": 2}).build(10, 1, 8)
    else:
        config = tmp_path / "vit_class.yaml"
        config.write_text(yaml.safe_dump(VIT_CLASS))
        from timm.models.vision_transformer import VisionTransformer

        reference = VisionTransformer(**VIT_CLASS["model"]["init_args"]["net"]["init_args"])
    cli = run_lightning(fit_args(tmp_path, "--config", str(config), "--model.convert={to: dyt}", *ONE_STEP))
    layernorms = [name for name, m in reference.named_modules() if isinstance(m, nn.LayerNorm)]
    assert cli.model.converted == layernorms and len(layernorms) == 2 * len(reference.blocks) + 1
    assert_only_converted_changed(cli.model.net, reference, layernorms, nn.LayerNorm, channels_last=True)
    assert cli.trainer.global_step == 1  # one optimizer step, and the DyTs' alpha took part in it
    assert all(cli.model.net.get_submodule(site).alpha.item() != 0.5 for site in layernorms)
    table = (tmp_path / "quickstart" / "version_0" / "placement.txt").read_text()
    assert all(re.search(rf"^{re.escape(site)} +channels_last +dyt\(alpha_init=0\.5\)$", table, re.M)
               for site in layernorms)


def test_a_timm_resnet_with_dyt_in_the_last_stage_trains_one_step(tmp_path):
    convert = "--model.convert={to: dyt, kinds: [batchnorm], sites: [layer4.*]}"
    cli = run_lightning(fit_args(tmp_path, convert, "--model.alpha_init=0.2", *ONE_STEP, config=TIMM_EXPERIMENT))
    reference = TimmModel("resnet18").build(10, 1, 8)
    last_stage = [name for name, m in reference.named_modules()
                  if isinstance(m, nn.BatchNorm2d) and name.startswith("layer4.")]
    assert cli.model.converted == last_stage and len(last_stage) == 5
    assert_only_converted_changed(cli.model.net, reference, last_stage, nn.BatchNorm2d, channels_last=False)
    assert cli.trainer.global_step == 1
    table = (tmp_path / "timm_resnet18_bn_vs_dyt_digits" / "version_0" / "placement.txt").read_text()
    assert re.search(r"^layer4\.0\.downsample\.1 +channels_first +dyt\(alpha_init=0\.2\)$", table, re.M)
    assert re.search(r"^layer3\.1\.bn2 +channels_first +batchnorm$", table, re.M)
    assert len(table.splitlines()) == 2 + 20  # header, rule, every BatchNorm site of resnet18


def test_builders_take_classes_channels_and_image_size_from_the_data():
    resnet = ImageClassifier(TimmModel("resnet18"), num_classes=7, in_channels=1, image_size=8)
    assert resnet.net.conv1.in_channels == 1 and resnet.net.fc.out_features == 7
    assert resnet.hparams.net == {"class_path": "dyt_lab.models.TimmModel",
                                  "init_args": {"name": "resnet18", "kwargs": None}}  # recorded for checkpoints
    vit = ImageClassifier(TimmModel("vit_tiny_patch16_224", {"patch_size": 2}), num_classes=7, in_channels=1,
                          image_size=8).net
    assert vit.patch_embed.img_size == (8, 8) and vit.patch_embed.proj.in_channels == 1
    torchvision_resnet = ImageClassifier(TorchvisionModel("resnet18"), num_classes=7, in_channels=1,
                                         image_size=8).net
    assert torchvision_resnet.conv1.in_channels == 1  # torchvision's stem, rebuilt for grey images
    assert torchvision_resnet(torch.zeros(2, 1, 8, 8)).shape == (2, 7)
    with pytest.raises(RuntimeError, match="placeholder"):
        TimmModel("resnet18")(torch.zeros(1, 3, 8, 8))


def test_convert_works_on_every_classifier_with_alpha_init():
    model = ResNetClassifier("resnet_tiny", num_classes=10, in_channels=1, alpha_init=0.3,
                             convert=NormConversion("dyt", sites=["stem.norm"]))
    assert model.converted == ["stem.norm"] and isinstance(model.net.stem.norm, DyT)
    assert model.net.stem.norm.alpha_init == 0.3
    table = model.placement_table()
    assert re.search(r"^stem\.norm +channels_first +dyt\(alpha_init=0\.3\)$", table, re.M)
    assert re.search(r"^layer1\.0\.norm1 +channels_first +batchnorm$", table, re.M)
    own = NormConversion({"name": "dyt", "alpha_init": 2.0}, kinds=["batchnorm"], sites=["layer4.*"])
    net = ImageClassifier(TimmModel("resnet18"), in_channels=1, image_size=8, convert=own, alpha_init=0.3).net
    assert net.layer4[0].bn1.alpha_init == 2.0  # the spec's own alpha0 wins over alpha_init


@pytest.mark.parametrize(("convert", "message"), [
    (NormConversion("dyt", kinds=["layernorm"]),
     r"found no layernorm module in ResNet; nothing to replace; its norms: batchnorm \(20\)$"),
    (NormConversion("dyt", sites=["layer4.*", "layer5.*"]),
     r"no norm module at sites \['layer5\.\*'\] in ResNet; its norm sites: bn1, layer1\.\*\.bn1, .*layer4\.\*\.bn2"),
    (NormConversion("dyt", kinds=["ln"]), r"unknown kind 'ln' for convert_norms; valid kinds: layernorm, batchnorm"),
    (NormConversion("dytt"), r"unknown norm 'dytt' \(did you mean 'dyt'\?\); valid names: layernorm"),
])
def test_a_conversion_that_does_not_fit_the_network_is_one_line(convert, message):
    with pytest.raises(ConfigError, match="^--model.convert: .*" + message):
        ImageClassifier(TimmModel("resnet18"), in_channels=1, image_size=8, convert=convert)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: TimmModel("resnet19"), r"unknown timm model 'resnet19' \(did you mean 'resnet18'"),
    (lambda: TorchvisionModel("resnet19"), r"unknown torchvision model 'resnet19' \(did you mean 'resnet18'"),
    (lambda: TimmModel("resnet18", {"in_chans": 3}), r"'in_chans' is set from the data module"),
    (lambda: TimmModel("resnet18", {"drop_rat": 0.1}).build(10, 1, 8),
     r"'resnet18' \(ResNet\) has no argument 'drop_rat'; did you mean 'drop_rate'\?"),
    (lambda: TimmModel("vit_tiny_patch16_224", {"norm_layer": "dyt_lab.norms.DyT"}).build(10, 1, 8),
     r"KeyError.*use --model.convert"),
    (lambda: TimmModel("vit_tiny_patch16_224").build(10, 1, 8), r"cannot take the data's 1x8x8 images"),
])
def test_a_timm_or_torchvision_mistake_is_one_line(make, message):
    with pytest.raises(ConfigError, match=message) as refused:
        make()
    assert "\n" not in str(refused.value)


@pytest.mark.slow
def test_fit_prints_the_converted_sites_and_resumes_from_last(tmp_path, monkeypatch, capsys):
    """The issue's acceptance run, as a user types it: fit, then continue with --ckpt_path last."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    fit = ["fit", "--config", "configs/quickstart.yaml", "--config", "configs/model/timm_resnet18.yaml",
           "--model.convert", "{to: dyt, kinds: [batchnorm], sites: [layer4.*]}",
           "--model.net.init_args.kwargs", NARROW, "--trainer.limit_train_batches=2",
           "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
           "--trainer.enable_model_summary=false"]
    first = run_cli([*fit, "--trainer.max_epochs=1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert re.search(r"^layer4\.1\.bn2 +channels_first +dyt\(alpha_init=0\.5\)$", first.stdout, re.M)
    assert re.search(r"^bn1 +channels_first +batchnorm$", first.stdout, re.M)
    resumed = run_cli([*fit, "--trainer.max_epochs=2", "--ckpt_path", "last"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Done: val/acc_best" in resumed.stderr and "after 2 epochs" in resumed.stderr
    assert [p.name for p in (tmp_path / "runs" / "quickstart").iterdir()] == ["version_0"]  # the same run folder
    state = torch.load(tmp_path / "runs/quickstart/version_0/checkpoints/last.ckpt", weights_only=True)
    assert state["epoch"] == 1 and "net.layer4.0.bn1.alpha" in state["state_dict"]
    # a checkpoint converted otherwise, or of another timm model, is one line naming both values
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as refused:
        main([*fit, "--trainer.max_epochs=3", "--ckpt_path", "last", "--model.net.init_args.name", "resnet34",
              "--model.convert", "{to: dyt, kinds: [batchnorm], sites: [layer3.*]}"])
    line = last_line(capsys.readouterr().err)
    assert refused.value.code == 2 and line.startswith("error: --ckpt_path")
    assert "'sites': ['layer3.*']} (checkpoint: {'to': 'dyt', 'kinds': ['batchnorm'], 'sites': ['layer4.*']})" in line
    assert "model.net.name=resnet34 (checkpoint: resnet18)" in line


@pytest.mark.slow
def test_diagnostics_and_probe_read_a_converted_timm_model(tmp_path):
    run_lightning(fit_args(tmp_path, "--model.convert={to: dyt, kinds: [batchnorm], sites: [layer4.*]}",
                           f"--model.net.init_args.kwargs={NARROW}",
                           "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                           "--trainer.callbacks+=dyt_lab.diagnostics.NormDiagnostics",
                           "--trainer.callbacks.alpha_every_n_steps=1", config=TIMM_EXPERIMENT))
    run_dir = tmp_path / "timm_resnet18_bn_vs_dyt_digits" / "version_0"
    tags = set(SummaryReader(str(run_dir), pivot=False).scalars["tag"])
    assert {"norms/layer4.0.bn1/alpha", "norms/layer4.0.bn1/saturation", "norms/bn1/divisor"} <= tags
    assert "norms/bn1/alpha" not in tags  # still a BatchNorm
    out = tmp_path / "probe"
    main(["probe", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--out", str(out)])
    with open(out / "stats.csv") as handle:
        kinds = {row["site"]: row["kind"] for row in csv.DictReader(handle)}
    assert {kind for site, kind in kinds.items() if site.startswith("layer4.")} == {"dyt"}
    assert {kind for site, kind in kinds.items() if not site.startswith("layer4.")} == {"batchnorm"}
    assert len(kinds) == 21 and "bn1" in kinds  # at this width layer1 has a downsample norm too


@pytest.mark.slow
def test_the_shipped_timm_study_runs(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    tiny = ("{trainer.max_epochs: 1, trainer.limit_train_batches: 2, trainer.limit_val_batches: 1, "
            f"trainer.enable_model_summary: false, model.net.init_args.kwargs: {NARROW}}}")
    done = run_cli(["study", "run", "--config", "configs/study/timm_alpha_init.yaml", "--n_trials", "2",
                    "--root", "studies", "--base.overrides", tiny], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2/2 trials (2 complete)" in done.stdout + done.stderr
    for trial in sorted((tmp_path / "studies" / "timm_alpha_init" / "trials").iterdir()):
        alpha = yaml.safe_load((trial / "config.yaml").read_text())["model"]["init_args"]["alpha_init"]
        table = (trial / "placement.txt").read_text()
        assert re.search(rf"^layer4\.1\.bn2 +channels_first +dyt\(alpha_init={alpha:g}\)$", table, re.M), table
