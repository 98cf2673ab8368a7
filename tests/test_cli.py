"""The dyt-lab command as a user runs it: config round trips and two-process DDP (bad input: test_bad_input.py)."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from dyt_lab.cli import main
from dyt_lab.predictions import read_predictions
from tests.helpers import QUICKSTART, ROOT, fit_args, run_cli


def _print_config(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_print_config_round_trip_and_composition(tmp_path, capsys):
    printed = _print_config(capsys, "--config", str(QUICKSTART), "--model.norm=derf")
    config = yaml.safe_load(printed)
    assert config["model"]["init_args"]["norm"] == "derf"
    assert config["model"]["class_path"] == "dyt_lab.training.ViTClassifier"
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    assert _print_config(capsys, "--config", str(saved)) == printed

    composed = yaml.safe_load(_print_config(
        capsys, *[f"--config={ROOT / 'configs' / c}" for c in ("model/resnet_tiny.yaml", "data/mnist5k.yaml",
                                                              "trainer/cpu.yaml")], "--model.placement=stage3"))
    assert composed["model"]["class_path"] == "dyt_lab.training.ResNetClassifier"
    assert composed["model"]["init_args"]["placement"] == "stage3"
    assert composed["data"]["class_path"] == "dyt_lab.data.MNIST5k"


def test_norms_command_lists_the_registry(capsys):
    main(["norms"])
    table = capsys.readouterr().out
    assert "| `dyt` | `w * tanh(a * x) + b` | a: scalar; w, b: (C,) | alpha_init, fused |" in table and "| `groupnorm (gn)` |" in table


@pytest.mark.slow
def test_ddp_fit_with_two_cpu_processes(tmp_path):
    result = run_cli(fit_args(tmp_path, "--config", str(ROOT / "configs" / "trainer" / "cpu_ddp.yaml"),
                              "--trainer.max_epochs=1", "--model.depth=1", "--test_after_fit=true"),
                     cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout
    ckpt = torch.load(tmp_path / "quickstart" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 12  # each of the 2 ranks sees ceil(1437 / 2 / 64) batches, not 23
    # The test predictions are gathered from both ranks: 180 images once each (DDP's padding dropped).
    saved = read_predictions(tmp_path / "quickstart" / "version_0")
    assert saved is not None and list(saved["index"]) == list(range(180))
    printed = re.search(r"test/acc (0\.\d+)", result.stderr).group(1)
    assert (saved["pred"] == saved["label"]).mean() == pytest.approx(float(printed), abs=1e-4)


def test_cli_class_is_importable_and_subclassable(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dyt_lab.runs import DytLabCLI
    from dyt_lab.training.callbacks import LearningRateLog

    seen = []

    class Recording(DytLabCLI):
        def before_instantiate_classes(self) -> None:
            seen.append(self.config.model.init_args.norm)

    cli = Recording(args=["--config", str(QUICKSTART), "--model.norm=derf", "--model.depth=1", "--trainer.logger=false",
                          "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert seen == ["derf"] and type(cli.model).__name__ == "ViTClassifier"
    kinds = [type(cb) for cb in cli.trainer.callbacks]
    assert ModelCheckpoint not in kinds and LearningRateLog not in kinds  # both turned off above
    assert "DivergenceStop" in {kind.__name__ for kind in kinds}


def test_load_run_builds_without_running():
    from dyt_lab.runs import load_run

    model, datamodule, trainer = load_run(["--config", str(QUICKSTART), "--model.depth=1"])
    assert len(model.net.blocks) == 1 and model.hparams.num_classes == 10  # linked from the data
    assert type(datamodule).__name__ == "Digits" and trainer.max_epochs == 30


def test_help_lists_every_dyt_lab_command_and_each_commands_help_stays_its_own(capsys):
    main(["--help"])
    said = capsys.readouterr().out
    assert said.startswith("usage: dyt-lab COMMAND") and "Lightning Trainer command line tool" not in said
    listed = [line.split()[0] for line in said.split("commands:\n")[1].splitlines() if line.strip()]
    assert listed == ["fit", "validate", "test", "predict", "study", "probe", "norms"]
    assert "confirm | compare | holdout" in said
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code in (0, None) and "--trainer.max_epochs" in capsys.readouterr().out
