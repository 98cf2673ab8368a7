"""TensorBoard's HParams tab shows what a study varied: its trials' folder names, its searched keys and seed,
each trial's state and the trial it retries (``engine/objective.py``), read back through TensorBoard's own
hparams backend (``served`` in tests/helpers.py; a single fit's tab: tests/training/test_records.py).

The backend takes the experiment summary of the first run it reads, sorts its columns by ``differs`` and then
by name, and the tab ticks the first five; these tests ask the backend what it would serve for a tiny study's
``trials/`` folder.
"""

from __future__ import annotations

import pytest

from dyt_lab.study.attributes import CONFIGURATION
from dyt_lab.study.definition.space import SearchSpace, choice_label, saved_space
from dyt_lab.study.engine.objective import TRIAL_NAME_LIMIT, retried_trial, trial_dir_name, trial_row
from dyt_lab.study.engine.replicates import configuration_key
from tests.helpers import run_cli, served, ticked
from tests.study.helpers import BASE, TINY, load, write_study


def named(number: int, values: dict, seed: int | None = None, fixed: tuple = ()) -> str:
    """The folder name of trial ``number`` that ran ``values``, each searched over it and another but ``fixed`` keys.

    The trial is stored as Optuna stores it (labels), and decoded by the space that labelled it.
    """
    import optuna

    space = SearchSpace({key: [value] if key in fixed else [value, "other"] for key, value in values.items()})
    params = {key: choice_label(value) for key, value in values.items()}
    trial = optuna.trial.create_trial(params=params, distributions=space.distributions, value=0.5,
                                      user_attrs={} if seed is None else {"seed": seed})
    trial.number = number
    return trial_dir_name(trial, space.configuration(trial.params))


def test_trial_names_show_the_searched_values_that_vary_and_the_seed_short_and_safe():
    assert named(7, {"model.norm": "dyt", "model.alpha_init": 0.48329, "model.optimizer.lr": 0.002,
                     "data.batch_size": 64}, seed=1, fixed=("data.batch_size",)) \
        == "trial_0007-alpha_init=0.483-norm=dyt-lr=0.002-seed=1"  # batch_size cannot vary: not shown
    assert named(12, {}) == "trial_0012"  # nothing searched, no seeds
    spec = {"name": "factored", "squash": "tanh", "center": "batch", "scale": "batch_std"}  # a mapping (stored as JSON)
    assert named(3, {"model.norm": spec}, seed=0) == \
        "trial_0003-norm=center=batch,name=factored,scale=batch_std,squash=tanh-seed=0"
    # two keys that end alike keep their whole name; a list shows as a+b; odd characters become _
    assert named(1, {"data.norm": "a b/c", "model.norm": "dyt", "model.placement": ["stage1", "stage2"]}) \
        == "trial_0001-data.norm=a_b_c-model.norm=dyt-placement=stage1+stage2"
    long = named(2, {"model.rules": "x" * 300}, seed=4)
    assert len(long) == TRIAL_NAME_LIMIT and long.startswith("trial_0002-rules=xxx") and long.endswith("-seed=4")


@pytest.mark.slow
def test_a_studys_tensorboard_ticks_its_searched_keys_and_seed_and_names_runs_by_them(tmp_path):
    path = write_study(tmp_path, "tb", n_trials=1, seeds=[0, 1], sampler={"name": "grid", "seed": 0},
                       base={"configs": [BASE], "overrides": {**TINY, "trainer.max_epochs": 1,
                                                              "trainer.limit_test_batches": 1}},
                       search_space={"model.alpha_init": [0.5, 1.0], "model.optimizer.lr": [0.002, 0.004],
                                     "data.batch_size": [64]})  # one choice: searched, but it does not vary
    result = run_cli(["study", "run", "--config", str(path)], cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(tmp_path, "tb").trials
    assert len(trials) == 2
    space = saved_space(tmp_path / "studies" / "tb")
    names = [trial_dir_name(t, space.configuration(t.params)) for t in trials]
    logdir = tmp_path / "studies" / "tb" / "trials"
    assert sorted(p.name for p in logdir.iterdir()) == names
    assert names[0].startswith("trial_0000-alpha_init=") and "-lr=" in names[0] and names[0].endswith("-seed=0")
    assert "batch_size" not in names[0]

    experiment, groups = served(logdir)
    varied = ["model.alpha_init", "model.optimizer.lr", "seed_everything", "trial.state"]
    assert [info.name for info in experiment.hparam_infos if info.differs] == varied
    assert ticked(experiment)[:4] == varied
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "val/acc_best", "test/acc", "train/loss_epoch"]
    assert sorted(group.name for group in groups) == names  # each row is named by its run
    for group in groups:
        logged = {m.name.tag for m in group.metric_values}
        assert {"val/acc", "val/acc_best", "test/acc", "train/loss_epoch"} <= logged  # each declared metric has a value
    seeds = sorted(group.hparams["seed_everything"].number_value for group in groups)
    assert seeds == [0, 1]
    assert [group.hparams["trial.state"].string_value for group in groups] == ["complete", "complete"]


def test_a_trials_row_carries_its_state_and_the_trial_it_retries(tmp_path):
    """The row the worker writes when a trial ends: the fit's hparams.yaml, or the searched values if the
    fit ended before it wrote one; its state; and, for a retry, its parent (the last of Optuna's retry
    history, which copies the user attributes, an older ``retry_of`` among them)."""
    import optuna

    ran, early = tmp_path / "trials" / "trial_0002", tmp_path / "trials" / "trial_0003"
    ran.mkdir(parents=True)
    early.mkdir()
    (ran / "hparams.yaml").write_text("model.norm: dyt\nmodel.alpha_init: 0.5\nseed_everything: 1\n")
    trial_row(ran, "failed", None, 1.0, fallback={"model.norm": "ignored"})
    trial_row(early, "interrupted", 2, 1.0, fallback={"model.norm": "derf", "model.rules": {"stem": "dyt"}})
    _, groups = served(tmp_path / "trials")
    rows = {group.name: {k: getattr(v, v.WhichOneof("kind")) for k, v in group.hparams.items()} for group in groups}
    assert rows == {"trial_0002": {"model.norm": "dyt", "model.alpha_init": 0.5, "seed_everything": 1,
                                   "trial.state": "failed", "trial.retry_of": ""},
                    "trial_0003": {"model.norm": "derf", "model.rules": "{'stem': 'dyt'}",
                                   "trial.state": "interrupted", "trial.retry_of": "2"}}

    def frozen(user_attrs, system_attrs):
        return optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, user_attrs=user_attrs,
                                         system_attrs=system_attrs)

    assert retried_trial(frozen({}, {})) is None
    assert retried_trial(frozen({"retry_of": 4}, {})) == 4  # queued by a rerun
    assert retried_trial(frozen({"retry_of": 4}, {"failed_trial": 7, "retry_history": [7, 9]})) == 9


@pytest.mark.slow
def test_a_studys_rows_show_how_each_trial_ended_and_its_dashboard_names_the_metric(pruned_study):
    """Completed, pruned and diverged trials of one study, read back from their event files; the study
    names its objective's metric and each trial its configuration, for optuna-dashboard."""
    folder, stdout = pruned_study
    study = load(folder, "pruned")
    assert "(1 epoch, " in stdout and "1 epochs" not in stdout  # the pruned trials' lines
    experiment, groups = served(folder / "studies" / "pruned" / "trials")
    assert "trial.state" in ticked(experiment) and "trial.retry_of" in [i.name for i in experiment.hparam_infos]
    states = {group.name: group.hparams["trial.state"].string_value for group in groups}
    assert sorted(states.values()) == ["complete", "diverged", "pruned", "pruned"]
    for trial in study.trials:
        shown = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "diverged"}[trial.state.name]
        assert states[trial.user_attrs["run_dir"].rsplit("/", 1)[-1]] == shown
        assert trial.user_attrs[CONFIGURATION] == configuration_key(trial)
    assert study.metric_names == ["val/loss"]
