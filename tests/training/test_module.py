"""Training through the real LightningCLI, in-process: runs, learning, logs, resume, divergence."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from tbparse import SummaryReader

from dyt_lab.cli import main
from dyt_lab.runs import run_lightning
from dyt_lab.training import ResNetClassifier, ViTClassifier
from dyt_lab.training.callbacks import DIVERGED_MARKER
from tests.helpers import RESNET_DIGITS, ROOT, fit_args

TESTBED = ROOT / "configs" / "experiments" / "bn_factors_mnist5k.yaml"


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("model/vit_digits.yaml", "data/digits.yaml"),
        ("model/vit_mnist.yaml", "data/mnist5k.yaml"),
        ("model/resnet_tiny.yaml", "data/digits.yaml"),
        ("model/resnet_tiny.yaml", "data/mnist5k.yaml"),
    ],
)
def test_fast_dev_run_every_family_and_offline_data(tmp_path, model, data):
    cli = run_lightning([
        "fit", "--config", str(ROOT / "configs" / model), "--config", str(ROOT / "configs" / data),
        "--config", str(ROOT / "configs" / "trainer" / "cpu.yaml"), "--trainer.fast_dev_run=2",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
    ])
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    assert cli.model.hparams.num_classes == 10 and cli.model.hparams.in_channels == 1  # linked from data
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


@pytest.mark.slow
def test_short_fit_learns_and_logs_everything(tmp_path):
    cli = run_lightning(fit_args(tmp_path, "--trainer.max_epochs=4", "--model.norm=batchnorm",
                                 config=RESNET_DIGITS))
    metrics = cli.trainer.callback_metrics
    assert metrics["val/acc"] > 0.6  # chance is 0.1
    run_dir = tmp_path / "resnet_bn_vs_dyt_digits" / "version_0"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-epoch*-acc*.ckpt"))
    assert "stem.norm" in (run_dir / "placement.txt").read_text()

    reader = SummaryReader(str(run_dir))
    tags = set(reader.scalars["tag"])
    assert {"train/loss", "train/acc", "val/acc", "val/loss", "val/acc_best", "val/acc_top5"} <= tags
    assert "lr" in tags and not any(tag.startswith("lr-") or tag.startswith("lr/") for tag in tags)  # groups share it
    best = reader.scalars[reader.scalars["tag"] == "val/acc_best"]["value"]
    assert best.iloc[-1] == pytest.approx(max(reader.scalars[reader.scalars["tag"] == "val/acc"]["value"]))
    hparams = dict(zip(reader.hparams["tag"], reader.hparams["value"]))
    assert hparams["model.norm"] == "batchnorm" and hparams["model.preset"] == "resnet_tiny"
    assert hparams["model.num_classes"] == 10  # the linked value, not the signature default
    assert hparams["model.optimizer.lr"] == pytest.approx(0.002) and hparams["data.batch_size"] == 64
    assert "hp_metric" not in tags
    columns = hparam_columns(run_dir)  # the HParams tab's columns, in the order TensorBoard gets them
    assert columns[:5] == ["model.norm", "model.placement", "model.alpha_init", "model.optimizer.lr",
                           "seed_everything"]
    assert not [c for c in columns if "class_path" in c or "_instantiator" in c or "init_args" in c]
    assert {"model", "model.optimizer", "data", "data.batch_size"} <= set(columns)  # class paths as values
    assert hparams["model.optimizer"] == "torch.optim.AdamW"


def hparam_columns(run_dir) -> list[str]:
    """The hyperparameter names of the HParams experiment summary in ``run_dir``'s event files, in order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "_hparams_/experiment":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    return [info.name for info in data.experiment.hparam_infos]
    raise AssertionError(f"no HParams experiment summary under {run_dir}")


class StopAfterEpoch(Callback):
    """Ends fit after ``epoch`` epochs, as an interruption would (last.ckpt already written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.epoch:
            trainer.should_stop = True


@pytest.mark.slow
def test_resume_from_last_ends_like_an_uninterrupted_run(tmp_path):
    args = ["--trainer.max_epochs=4", "--trainer.enable_checkpointing=true"]
    whole = run_lightning(fit_args(tmp_path / "whole", *args))
    cut = run_lightning(fit_args(tmp_path / "cut", *args, "--trainer.callbacks+=tests.training.test_module.StopAfterEpoch",
                                 "--trainer.callbacks.epoch=2"))
    assert cut.trainer.current_epoch == 2
    last = torch.load(tmp_path / "cut" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == cut.trainer.global_step  # last.ckpt is the latest epoch, not the best
    resumed = run_lightning(fit_args(tmp_path / "cut", *args, "--ckpt_path=last"))
    assert resumed.trainer.log_dir == cut.trainer.log_dir  # the same run folder continues
    assert resumed.trainer.global_step == whole.trainer.global_step
    for key in ("val/acc", "val/loss", "val/acc_best", "train/acc"):
        assert resumed.trainer.callback_metrics[key].item() == pytest.approx(
            whole.trainer.callback_metrics[key].item(), abs=1e-6), key
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.slow
def test_last_checkpoint_is_the_latest_epoch_even_without_a_new_best(tmp_path):
    # lr 0: val/acc never improves after epoch 0, so only the first epoch is ever "best".
    cli = run_lightning(fit_args(tmp_path, "--trainer.max_epochs=3", "--model.depth=1",
                                 "--model.optimizer.init_args.lr=0"))
    checkpoints = tmp_path / "quickstart" / "version_0" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["global_step"] == cli.trainer.global_step == 3 * 23
    assert [p.name for p in checkpoints.glob("best-*.ckpt")] == [next(checkpoints.glob("best-epoch000-*")).name]


@pytest.mark.slow
def test_checkpoint_validates_and_predicts_without_retyping_the_model(tmp_path):
    fit = run_lightning(fit_args(tmp_path, "--trainer.max_epochs=1", "--model.preset=vit_digits", "--model.depth=2"))
    ckpt = next((tmp_path / "quickstart" / "version_0" / "checkpoints").glob("last.ckpt"))
    val = run_lightning(["validate", "--data=Digits", f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false",
                         f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert isinstance(val.model, ViTClassifier) and len(val.model.net.blocks) == 2
    assert val.trainer.callback_metrics["val/acc"].item() == pytest.approx(
        fit.trainer.callback_metrics["val/acc"].item(), abs=1e-6)
    restored = ViTClassifier.load_from_checkpoint(ckpt)
    assert restored.net.placement.sites == fit.model.net.placement.sites


def test_python_api_hparams_round_trip(tmp_path):
    model = ResNetClassifier(preset="resnet_tiny", num_classes=10, in_channels=1, image_size=8, norm="derf",
                             placement="stage3")
    assert model.hparams["norm"] == "derf" and model.hparams["placement"] == "stage3"
    rebuilt = ResNetClassifier(**model.hparams)
    assert str(rebuilt.net) == str(model.net)


def test_weight_decay_skips_one_dimensional_parameters():
    from dyt_lab.training import parameter_groups

    model = ViTClassifier(preset="vit_digits", num_classes=10, in_channels=1, image_size=8, norm="dyt_shift")
    decay, no_decay = parameter_groups(model.net)
    decayed = {id(p) for p in decay["params"]}
    net = model.net
    assert id(net.blocks[0].norm1.alpha) not in decayed and id(net.blocks[0].norm1.shift) not in decayed
    assert id(net.blocks[0].attn.qkv.bias) not in decayed and id(net.pos_embed) not in decayed
    assert id(net.blocks[0].attn.qkv.weight) in decayed and no_decay["weight_decay"] == 0.0


def test_divergence_stops_within_a_few_steps_and_marks_the_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--trainer.max_epochs=2", "--model.optimizer.init_args.lr=1e30",
                      "--model.scheduler.init_args.warmup_fraction=0"))
    assert exit_info.value.code == 3
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: diverged at step ") and message.endswith("(loss=nan)")
    step = int(message.split("step ")[1].split()[0])
    assert step <= 5
    run_dir = tmp_path / "quickstart" / "version_0"
    assert (run_dir / DIVERGED_MARKER).read_text().strip() == message.removeprefix("error: ")
    texts = SummaryReader(str(run_dir), pivot=False).text
    assert any("diverged at step" in value for value in texts["value"])
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_checkpoint_of_another_model_is_one_clear_line(tmp_path, capsys):
    run_lightning(fit_args(tmp_path, "--trainer.max_epochs=1", "--model.depth=1"))
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--trainer.max_epochs=2", "--model.depth=2", "--ckpt_path=last"))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: --ckpt_path '") and "model.depth=2 (checkpoint: 1)" in message


@pytest.mark.slow
def test_a_checkpoint_never_silently_replaces_the_runs_model_flags(tmp_path, capsys):
    run_lightning(fit_args(tmp_path, "--trainer.max_epochs=1", "--model.depth=1"))
    run_dir = tmp_path / "quickstart" / "version_0"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    config_before = (run_dir / "config.yaml").read_text()
    # the flags of the issue: another norm and learning rate, with the checkpoint given as a file
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--model.depth=1", "--model.norm=layernorm", "--model.optimizer.init_args.lr=0.1",
                      f"--ckpt_path={ckpt}", "--trainer.max_epochs=2", "--trainer.logger.init_args.name=flag_ignored"))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.norm=layernorm (checkpoint: dyt)" in message and "model.optimizer.lr=0.1 (checkpoint: 0.002)" in message
    assert not (tmp_path / "flag_ignored").exists() and (run_dir / "config.yaml").read_text() == config_before
    # another model class altogether: a ResNet config validating a ViT checkpoint
    with pytest.raises(SystemExit):
        main(["validate", "--config", str(RESNET_DIGITS), f"--ckpt_path={ckpt}", "--trainer.logger=false"])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model=dyt_lab.training.ResNetClassifier (checkpoint: ViTClassifier)" in message
    # the same flags as the checkpoint's: the run continues, from the checkpoint
    resumed = run_lightning(fit_args(tmp_path, "--model.depth=1", f"--ckpt_path={ckpt}", "--trainer.max_epochs=2"))
    assert resumed.trainer.current_epoch == 2


@pytest.mark.parametrize(("classifier", "net_class"), [(ViTClassifier, "ViT"), (ResNetClassifier, "ResNet")])
def test_classifier_arguments_are_the_models_then_image_classifiers(classifier, net_class):
    import inspect

    from dyt_lab import models
    from dyt_lab.training import ImageClassifier

    def params(function):
        return {name: (p.default, p.annotation) for name, p in inspect.signature(function, eval_str=True).parameters.items()
                if name not in ("self", "net")}

    own, net = params(classifier), params(getattr(models, net_class))
    assert list(own)[:len(net)] == list(net) and {k: own[k] for k in net} == net  # names, defaults, types, order
    assert set(own) == set(net) | set(params(ImageClassifier))
    documented = inspect.getdoc(classifier.__init__).split("Args:")[1]
    assert all(f"\n    {name}: " in documented for name in own)  # every argument has its --help line
    with pytest.raises(TypeError, match="nrom"):  # a typo is refused, as by a written-out constructor
        classifier(nrom="dyt")


class StepLosses(Callback):
    """Records every training step's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())


@pytest.mark.parametrize("point", ["center: batch, scale: batch_std, squash: none",  # BatchNorm
                                   "center: none, scale: alpha, squash: tanh"])  # DyT
def test_the_testbeds_fast_path_trains_as_the_path_the_first_studies_ran(tmp_path, point):
    """Library kernels on channels-last maps (the default) against the factored formula as written on NCHW maps:
    the first 12 steps of the testbed's real fit give the same losses to a relative 2e-3.

    Not bit for bit: each switch alone reorders floating-point sums (F.batch_norm's Welford variance,
    oneDNN's NHWC convolution), and AdamW's normalised steps carry that into the loss at about 3e-4
    by step 12 (measured: 2.6e-4 per switch, 7.6e-4 together, at BatchNorm's point; 2e-7 at DyT's)."""
    losses = {}
    for fused, memory_format in (("false", "contiguous"), ("true", "channels_last")):
        cli = run_lightning(fit_args(tmp_path / memory_format, f"--model.norm={{name: factored, {point}, fused: {fused}}}",
                                     f"--model.memory_format={memory_format}", "--trainer.max_epochs=1",
                                     "--trainer.limit_train_batches=12", "--trainer.limit_val_batches=1",
                                     "--trainer.callbacks+=tests.training.test_module.StepLosses", config=TESTBED))
        losses[memory_format] = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "StepLosses").losses  # tests.training.test_module
    assert len(losses["contiguous"]) == 12
    assert losses["channels_last"] == pytest.approx(losses["contiguous"], rel=2e-3)


def test_test_pass_saves_each_test_image_prediction(tmp_path):
    from dyt_lab.predictions import read_predictions

    cli = run_lightning(fit_args(tmp_path, "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                                 "--model.depth=1", "--test_after_fit=true"))
    saved = read_predictions(tmp_path / "quickstart" / "version_0")
    test_labels = cli.datamodule.test_set.tensors[1].numpy()
    assert saved is not None and list(saved["index"]) == list(range(len(test_labels)))  # every image once, in order
    assert (saved["label"] == test_labels).all()
    accuracy = float(cli.trainer.callback_metrics["test/acc"])
    assert (saved["pred"] == saved["label"]).mean() == pytest.approx(accuracy, abs=1e-6)
