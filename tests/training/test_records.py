"""TensorBoard's HParams tab for a single fit shows its real arguments (``training/records.py``): read back
through TensorBoard's own hparams backend (``served`` in tests/helpers.py).

The backend takes the experiment summary of the first run it reads, sorts its columns by ``differs`` and then
by name, and the tab ticks the first five; these tests ask the backend what it would serve for a single fit's
``runs/`` folder (a study's trials: tests/study/test_engine_tensorboard.py).
"""

from __future__ import annotations

import pytest
import yaml

from dyt_lab.training.records import HPARAM_FIRST, HPARAM_METRICS, experiment_summary, one_column_each
from tests.helpers import RESNET_DIGITS, fit_args, served, ticked


def test_the_experiment_summary_marks_varied_keys_and_their_options_first():
    from tensorboard.plugins.hparams import metadata

    hparams = {"model.norm.center": "batch", "model.norm.scale": "alpha", "data.batch_size": 64,
               "model.optimizer.lr": 0.002, "model.normalize": True, "seed_everything": 1}
    summary = experiment_summary(hparams, ["model.norm", "model.optimizer.init_args.lr", "seed_everything"],
                                 ["val/acc", "test/acc"])
    (value,) = summary.value
    assert value.tag == metadata.EXPERIMENT_TAG
    experiment = metadata.parse_experiment_plugin_data(value.metadata.plugin_data.content)
    names = [(info.name, info.differs) for info in experiment.hparam_infos]
    assert names == [("model.norm.center", True), ("model.norm.scale", True), ("model.optimizer.lr", True),
                     ("seed_everything", True), ("data.batch_size", False), ("model.normalize", False)]
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "test/acc"]


@pytest.mark.slow
def test_a_single_fits_tensorboard_ticks_its_real_arguments(tmp_path, capsys):
    from dyt_lab.runs import run_lightning

    run_lightning(fit_args(tmp_path / "runs", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                           "--trainer.limit_val_batches=1", "--model.norm=dyt", config=RESNET_DIGITS))
    assert "after 1 epoch.\n" in capsys.readouterr().err  # not "1 epochs"
    experiment, (group,) = served(tmp_path / "runs")
    assert ticked(experiment) == sorted(HPARAM_FIRST)  # the tab sorts the differing columns by name
    assert [info.name for info in experiment.hparam_infos if info.differs] == sorted(HPARAM_FIRST)
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    assert group.name == "resnet_bn_vs_dyt_digits/version_0" and group.hparams["model.norm"].string_value == "dyt"
    config = yaml.safe_load((tmp_path / "runs" / group.name / "hparams.yaml").read_text())
    assert config["model.alpha_init"] == group.hparams["model.alpha_init"].number_value


def test_a_plain_runs_norm_mapping_is_one_column_so_its_five_real_arguments_stay_ticked():
    hparams = {"model.norm.name": "factored", "model.norm.center": "none", "model.norm.scale": "alpha",
               "model.placement": "all", "model.alpha_init": 0.5, "data.batch_size": 64}
    assert one_column_each(hparams, HPARAM_FIRST) == {
        "model.norm": "factored(center=none, scale=alpha)", "model.placement": "all", "model.alpha_init": 0.5,
        "data.batch_size": 64}
    assert one_column_each({"model.rules.stem": "dyt", "x": 1}, ["model.rules"]) == {"model.rules": "stem=dyt", "x": 1}


@pytest.mark.slow
def test_a_single_fit_with_a_norm_mapping_ticks_the_same_five_arguments(tmp_path):
    from dyt_lab.runs import run_lightning

    run_lightning(fit_args(tmp_path / "runs", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                           "--trainer.limit_val_batches=1", "--model.norm={name: dyt, alpha_init: 2.0}", config=RESNET_DIGITS))
    experiment, (group,) = served(tmp_path / "runs")
    assert ticked(experiment) == sorted(HPARAM_FIRST)
    assert group.hparams["model.norm"].string_value == "dyt(alpha_init=2.0)"
