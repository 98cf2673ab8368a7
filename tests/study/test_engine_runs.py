"""Optuna studies as a user runs them: real trials (a tiny ResNet on digits), pruning, a diverged
trial, kill -9 and resume, two workers on a journal, the report, and bad input refused up front."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dyt_lab.cli import main
from dyt_lab.study.definition.space import SearchSpace, saved_space
from dyt_lab.study.definition.storage import retried_trial_number, retry_history
from dyt_lab.study.definition.study_file import Distribution
from dyt_lab.study.engine.objective import trial_dir_name
from tests.helpers import ROOT, last_line, run_cli

BASE = str(ROOT / "configs" / "experiments" / "resnet_bn_vs_dyt_digits.yaml")
# Trials of a few seconds each: most of a trial's time is starting Python and Lightning.
TINY = {"trainer.max_epochs": 2, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
        "trainer.enable_model_summary": False}


def write_study(folder: Path, name: str, **keys) -> Path:
    """A study file over the tiny ResNet, its study folder under ``folder/studies``."""
    spec = {"study_name": name, "root": str(folder / "studies"), "base": {"configs": [BASE], "overrides": TINY},
            "search_space": {"model.norm": ["dyt", "derf"]}, "sampler": {"name": "grid"},
            "pruner": {"name": "none"}, "n_trials": 2, **keys}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def load(folder: Path, name: str, file: str = "study.db") -> optuna.Study:
    storage = f"sqlite:///{folder / 'studies' / name / file}" if file.endswith(".db") else \
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "studies" / name / file)))
    return optuna.load_study(study_name=name, storage=storage)


def counted(study: optuna.Study) -> list:
    retried = {n for t in study.trials for n in retry_history(t)}
    return [t for t in study.trials if t.number not in retried]


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory):
    """4 trials of a grid over lr x alpha0: lr 0.003 learns, 1e-12 does not (pruned), 1e30 diverges.

    The grid's order is fixed by its seed; seed 3 runs (alpha0, lr) = (1, 0.003), (1, 1e30),
    (1, 1e-12), (0.5, 1e-12): a completed trial first, so the median pruner has a reference.
    Run once per test session even when xdist spreads its tests over workers (a shared folder
    and a file lock, as xdist's documentation does it for session fixtures).
    """
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()  # under xdist, its parent is this session's, shared by workers
    folder = (shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared) / "pruned_study"
    with FileLock(f"{folder}.lock"):
        if not (folder / "run.json").is_file():
            folder.mkdir(exist_ok=True)
            path = write_study(folder, "pruned", n_trials=4, sampler={"name": "grid", "seed": 3},
                               base={"configs": [BASE], "overrides": {**TINY, "trainer.limit_train_batches": 8}},
                               search_space={"model.optimizer.lr": [0.003, 1.0e-12, 1.0e30],
                                             "model.alpha_init": [0.5, 1.0]},
                               objective={"metric": "val/loss", "direction": "minimize"},
                               pruner={"name": "median", "kwargs": {"n_startup_trials": 1}})
            result = run_cli(["study", "run", "--config", str(path)], cwd=folder, timeout=400)
            assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
            (folder / "run.json").write_text(json.dumps({"stdout": result.stdout, "stderr": result.stderr}))
    return folder, json.loads((folder / "run.json").read_text())["stdout"]


@pytest.mark.slow
def test_study_with_a_pruner_ends_with_n_trials_in_their_states(pruned_study):
    folder, stdout = pruned_study
    study = load(folder, "pruned")
    assert [(t.params["model.alpha_init"], t.params["model.optimizer.lr"], t.state) for t in study.trials] == [
        (1.0, 0.003, TrialState.COMPLETE), (1.0, 1e30, TrialState.FAIL),
        (1.0, 1e-12, TrialState.PRUNED), (0.5, 1e-12, TrialState.PRUNED)]
    for t in study.trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / "config.yaml").is_file() and list(run_dir.glob("events.out.tfevents.*"))
        assert t.user_attrs["config"] == str(run_dir / "config.yaml") and t.user_attrs["wall_time_s"] > 0
        if t.state == TrialState.PRUNED:  # stopped after its first validation epoch, of 2
            assert t.user_attrs["epochs"] == 1 and list(t.intermediate_values) == [0]
            assert t.value > study.trials[0].intermediate_values[0]
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["epochs"] == 2 and t.value == min(t.intermediate_values.values())
    assert "4/4 trials (1 complete, 2 pruned, 1 diverged)" in stdout  # a diverged run is a result: exit 0


@pytest.mark.slow
def test_diverged_trial_is_failed_with_its_reason_and_the_study_goes_on(pruned_study):
    folder, stdout = pruned_study
    study = load(folder, "pruned")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.params["model.optimizer.lr"] for t in failed] == [1e30]
    for t in failed:
        assert t.user_attrs["fail_reason"].startswith("diverged at step") and "loss=nan" in t.user_attrs["fail_reason"]
        assert t.user_attrs["exit_code"] == 3
        assert f"trial {t.number} FAILED: diverged at step" in stdout
    assert max(t.number for t in study.trials) > min(t.number for t in failed)  # trials ran after it


@pytest.mark.slow
def test_report_writes_its_files_and_lists_every_trial(pruned_study, capsys):
    folder, _ = pruned_study
    main(["study", "report", "pruned", "--root", str(folder / "studies")])
    printed = capsys.readouterr().out
    out = folder / "studies" / "pruned"
    for name in ("report.md", "trials.csv", "history.png", "objective_vs_model.alpha_init.png",
                 "objective_vs_model.optimizer.lr.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert sorted(int(r.split("|")[1]) for r in rows) == list(range(4))
    assert "## Best trial" in report and "```yaml" in report and "## Parameter importances" in report
    assert "optuna-dashboard sqlite:///" in printed and "tensorboard --logdir" in printed
    assert "diverged at step" in report and "| pruned " in report
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 5  # header + 4 trials


def _python_env(folder: Path) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLCONFIGDIR": str(folder / ".mpl"), "OMP_NUM_THREADS": "1"}
    env.pop("DYT_LAB_DEBUG", None)
    return env


@pytest.mark.slow
def test_kill_9_then_resume_loses_no_trial_and_repeats_no_grid_point(tmp_path):
    path = write_study(tmp_path, "killed", n_trials=3, search_space={"model.norm": ["dyt", "derf", "dyt_shift"]},
                       base={"configs": [BASE], "overrides": {**TINY, "trainer.max_epochs": 4}})
    command = [sys.executable, "-m", "dyt_lab", "study", "run", "--config", str(path)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=_python_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    trials = tmp_path / "studies" / "killed" / "trials"
    deadline = time.monotonic() + 300
    while not list(trials.glob("trial_0001*/study_result.json")):  # trial 1 has finished an epoch: it is mid-run
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = load(tmp_path, "killed").trials[1]
    assert killed.state == TrialState.RUNNING
    deadline = time.monotonic() + 20
    while _alive(killed.user_attrs["trial_pid"]):  # its fit process dies with it: no orphan training on
        assert time.monotonic() < deadline, "the trial process outlived the killed study process"
        time.sleep(0.2)

    result = run_cli(["study", "run", "--config", str(path)], cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 1 FAILED: its worker died" in result.stdout
    study = load(tmp_path, "killed")
    killed = study.trials[1]
    assert killed.state == TrialState.FAIL and "died" in killed.user_attrs["fail_reason"]
    kept = counted(study)
    assert len(kept) == 3 and all(t.state == TrialState.COMPLETE for t in kept)
    assert study.trials[0] in kept  # the trial finished before the kill is kept, not re-run
    assert sorted(t.params["model.norm"] for t in kept) == ["derf", "dyt", "dyt_shift"]  # each grid point once
    retry = next(t for t in study.trials if retried_trial_number(t) == 1)
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["fail_reason"] is None  # the completed retry does not keep its predecessor's failure
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]


def _alive(pid: int) -> bool:
    from dyt_lab.study.engine.liveness import pid_alive

    return pid_alive(pid)


@pytest.mark.slow
def test_two_workers_on_one_journal_lose_and_duplicate_no_trial(tmp_path):
    path = write_study(tmp_path, "pair", n_trials=3, storage="journal", workers=2,
                       sampler={"name": "random", "seed": 0})
    result = run_cli(["study", "run", "--config", str(path)], cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path, "pair", file="journal.log")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers ran trials
    run_dirs = sorted(p.name for p in (tmp_path / "studies" / "pair" / "trials").iterdir())
    space = saved_space(tmp_path / "studies" / "pair")
    assert run_dirs == [trial_dir_name(t, space.configuration(t.params)) for t in study.trials]  # one folder per trial
    assert "[worker 0]" in result.stdout and "[worker 1]" in result.stdout


def test_search_space_labels_list_choices_and_maps_them_back():
    space = SearchSpace({"model.placement": ["all", ["stage1", "stage2"]],
                         "model.alpha_init": Distribution(type="float", low=0.05, high=5.0, log=True)})
    assert space.distributions["model.placement"].choices == ("all", "stage1+stage2")
    assert space.configuration({"model.placement": "stage1+stage2", "model.alpha_init": 0.5}).flags() == [
        '--model.placement=["stage1", "stage2"]', "--model.alpha_init=0.5"]
    assert [label for label, _ in space.probes()["model.alpha_init"]] == [0.05, 5.0]


def test_a_factorial_entry_is_every_combination_in_the_order_written_and_each_option_a_factor():
    from dyt_lab.study.definition.design import design_cells, varying_factors

    space = SearchSpace({"model.rules": Distribution(type="categorical", factorial={
        "downsample": ["batchnorm", "dyt"], "stem": ["batchnorm", "dyt"], "stage1": ["batchnorm", "dyt"]})})
    values = [space.configuration({"model.rules": label}).values["model.rules"]
              for label in space.distributions["model.rules"].choices]
    assert len(values) == 8 and all(list(v) == ["downsample", "stem", "stage1"] for v in values)
    assert {tuple(v.values()) for v in values} == {(a, b, c) for a in ("batchnorm", "dyt") for b in ("batchnorm", "dyt")
                                                   for c in ("batchnorm", "dyt")}
    assert space.configuration({"model.rules": space.distributions["model.rules"].choices[0]}).flags()[0].startswith(
        '--model.rules={"downsample": ')  # the flag keeps the written order: the first rule matches first
    assert varying_factors(design_cells(space)) == ["downsample", "stem", "stage1"]


def test_study_file_keys_are_flags_and_override_flags_set_one_dotted_key(tmp_path):
    from dyt_lab.study.definition.study_file import load_spec

    path = write_study(tmp_path, "flags", base={"configs": [BASE], "overrides": {"trainer": {"max_epochs": 2}}})
    spec = load_spec(["--config", str(path), "--n_trials", "7", "--sampler.name=random",
                      "--base.overrides.trainer.accelerator=cpu", "--base.overrides.trainer.precision", "32"])
    assert (spec.n_trials, spec.sampler.name, spec.study_name) == (7, "random", "flags")
    assert spec.base.overrides == {"trainer.max_epochs": 2, "trainer.accelerator": "cpu", "trainer.precision": "32"}


def test_an_override_that_swaps_a_class_acts_as_the_same_mapping_in_a_config_file(tmp_path):
    """``data: {class_path: ...}`` in base.overrides stays data (it was built and JSON-encoded) and means
    what it means in a config file listed under base.configs."""
    from dyt_lab.runs import load_run
    from dyt_lab.study.definition.space import SearchSpace
    from dyt_lab.study.definition.study_file import load_spec
    from dyt_lab.study.engine.objective import base_args
    from dyt_lab.study.engine.precheck import check_trials

    swap = {"class_path": "dyt_lab.data.MNIST5k", "init_args": {"batch_size": 32, "val_fraction": 0.2}}
    callbacks = [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}]
    path = write_study(tmp_path, "swap", base={"configs": [BASE], "overrides": {
        **TINY, "data": swap, "trainer": {"callbacks": callbacks}}})
    spec = load_spec(["--config", str(path)])
    assert spec.base.overrides["data"] == swap and spec.base.overrides["trainer.callbacks"] == callbacks
    check_trials(spec, SearchSpace(spec.search_space), gpus=0)  # the up-front check builds it

    (tmp_path / "swap_data.yaml").write_text(yaml.safe_dump({"data": swap}))
    from_overrides = load_run(base_args(spec)).datamodule
    from_file = load_run(["--config", BASE, "--config", str(tmp_path / "swap_data.yaml")]).datamodule
    assert type(from_overrides).__name__ == "MNIST5k" and dict(from_overrides.hparams) == dict(from_file.hparams)
    assert from_overrides.hparams["batch_size"] == 32 and from_overrides.hparams["val_fraction"] == 0.2



@pytest.mark.parametrize("form", ["list", "categorical"])
def test_a_choice_that_swaps_a_class_stays_data_and_builds_as_in_a_config_file(tmp_path, form):
    """``data: [{class_path: ...}, ...]`` in search_space stays data (the study parser built it, and the
    space could not label it), and each choice means what it means in a config file."""
    from dyt_lab.runs import load_run
    from dyt_lab.study.definition.study_file import load_spec
    from dyt_lab.study.engine.objective import base_args
    from dyt_lab.study.engine.precheck import check_trials

    swaps = [{"class_path": "dyt_lab.data.MNIST5k", "init_args": {"batch_size": 32, "val_fraction": 0.2}},
             {"class_path": "dyt_lab.data.Digits", "init_args": {"batch_size": 16}}]
    entry = swaps if form == "list" else {"type": "categorical", "choices": swaps}
    spec = load_spec(["--config", str(write_study(tmp_path, "swap", search_space={"data": entry}))])
    space = SearchSpace(spec.search_space)
    assert [space.configuration({"data": label}).values["data"] for label in space.distributions["data"].choices] == swaps
    check_trials(spec, space, gpus=0)  # the up-front check builds each choice

    (tmp_path / "swap_data.yaml").write_text(yaml.safe_dump({"data": swaps[0]}))
    flags = space.configuration({"data": space.distributions["data"].choices[0]}).flags()
    from_choice = load_run([*base_args(spec), *flags]).datamodule
    from_file = load_run(["--config", BASE, "--config", str(tmp_path / "swap_data.yaml")]).datamodule
    assert type(from_choice).__name__ == "MNIST5k" and dict(from_choice.hparams) == dict(from_file.hparams)


BAD = {
    "key": ({"search_space": {"model.alpah_init": [0.1]}},
            "error: search_space key 'model.alpah_init' is not a key of the base config (did you mean "
            "'model.alpha_init'?)"),
    "low_high": ({"search_space": {"model.alpha_init": {"type": "float", "low": 5, "high": 0.1}}},
                 "error: search_space 'model.alpha_init': low 5.0 is greater than high 0.1"),
    "log_low": ({"search_space": {"model.alpha_init": {"type": "float", "low": 0, "high": 1, "log": True}}},
                "error: search_space 'model.alpha_init': log scale needs low > 0, got low=0.0"),
    "empty": ({"search_space": {"model.norm": []}},
              "error: search_space 'model.norm': a categorical needs at least one choice, got none"),
    "sampler": ({"sampler": {"name": "tpee"}}, "error: unknown sampler 'tpee'; valid: tpe, random, grid, or"),
    "pruner": ({"pruner": {"name": "medain"}}, "error: unknown pruner 'medain'; valid: median, hyperband, none, or"),
    "storage": ({"storage": "sqlite:////nonexistent/folder/study.db"},
                "error: storage 'sqlite:////nonexistent/folder/study.db' cannot be opened: "),
    "placement": ({"search_space": {"model.placement": ["all", "stage4"]}},
                  "error: search_space 'model.placement' = 'stage4': placement 'stage4' is neither a ResNet preset"),
    "seeds_empty": ({"seeds": []}, "error: seeds must be a non-empty list of integers, got []"),
    "seeds_text": ({"seeds": ["a"]}, "error: study file: "),
    "seeds_twice": ({"seeds": [0, 0]}, "error: seeds lists a seed twice: [0, 0]"),
    "isolation": ({"isolation": "thread"}, "error: study file: "),
    "reference_factor": ({"reference": {"scale": "alpha"}},
                         "error: reference: 'scale' is not a factor of this design; factors: model.norm"),
    "reference_level": ({"reference": {"model.norm": "batchnorm"}},
                        "error: reference: model.norm='batchnorm' is not a level of the design; levels: derf, dyt"),
    "gap_from_alone": ({"gap_from": {"model.norm": "dyt"}}, "error: gap_from needs a reference"),
    "factored_option": ({"search_space": {"model.norm": [{"name": "factored", "scale": "std"}]}},
                        "error: search_space 'model.norm' = '{\"name\":\"factored\",\"scale\":\"std\"}': "),
    "factored_cell": ({"search_space": {"model.norm": [{"name": "factored", "center": "none", "scale": "alpha"},
                                                       {"name": "factored", "center": "batch", "scale": "batch_std"}]},
                       "reference": {"center": "batch", "scale": "alpha"}},
                      "error: reference: no configuration of the design has center=batch, scale=alpha"),
    "factorial_empty": ({"search_space": {"model.rules": {"factorial": {"stem": []}}}},
                        "error: search_space 'model.rules': factorial maps each option to a non-empty list"),
    "margin_negative": ({"margin": -0.01}, "error: margin: equivalence margin -0.01 must be a finite number >= 0"),
    "margin_text": ({"margin": "half"}, "error: study file: "),
    "overrides_list": ({"base": {"configs": [BASE], "overrides": ["trainer.max_epochs", 2]}},
                       "error: study file: --base.overrides: Not of type Overrides: expected a mapping of config keys"),
    "override_class_unknown": ({"base": {"configs": [BASE], "overrides": {"data": {"class_path": "dyt_lab.data.Nope"}}}},
                               "error: the base config is refused by the dyt-lab fit parser: --data "),
    # values the parser takes and only the Trainer refuses: the check builds it as fit does
    "trainer_searched": ({"search_space": {"trainer.max_epochs": [2, -5]}},
                         "error: search_space 'trainer.max_epochs' = -5: --trainer: `max_epochs` must be a "
                         "non-negative integer or -1"),
    "trainer_override": ({"base": {"configs": [BASE], "overrides": {**TINY, "trainer.accumulate_grad_batches": 0}}},
                         "error: the base config: --trainer.accumulate_grad_batches must be a positive integer, got 0"),
    "accelerator": ({"base": {"configs": [BASE], "overrides": {**TINY, "trainer.accelerator": "tpuu"}}},
                    "error: the base config: --trainer: You selected an invalid accelerator name: `accelerator='tpuu'`"),
    # an objective the model never logs when a validation epoch ends: refused now, not after a trial's first epoch
    "metric_misspelt": ({"objective": {"metric": "val/accuracy"}},
                        "error: objective.metric 'val/accuracy' is not a metric ResNetClassifier logs (did you mean "
                        "'val/acc'?); it logs train/acc, train/loss, train/loss_epoch, val/acc, val/acc_best, "
                        "val/acc_top5, val/loss"),
    "metric_test_split": ({"objective": {"metric": "test/acc"}},
                          "error: objective.metric 'test/acc' is logged only by the test after fit, but a trial is "
                          "judged (and pruned) after each validation epoch: use val/acc"),
}


@pytest.mark.parametrize("case", [*BAD, "report", "yaml_syntax"])
def test_bad_input_is_refused_in_one_line_before_any_trial(tmp_path, capsys, case):
    if case == "report":
        args, expected = ["study", "report", "nosuch", "--root", str(tmp_path / "studies")], \
            "error: no study 'nosuch' under"
    elif case == "yaml_syntax":  # a list left open on line 2, seen on line 3: the file and place, as fit says it
        path = write_study(tmp_path, "bad")
        path.write_text(path.read_text().replace("base:\n", "base:\n  configs: [a.yaml\n", 1))
        args, expected = ["study", "run", "--config", str(path)], \
            f"error: study file '{path}' is not valid YAML at line 3, column 10: "
    else:
        keys, expected = BAD[case]
        args = ["study", "run", "--config", str(write_study(tmp_path, "bad", **keys))]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert last_line(err).startswith(expected) and "Traceback" not in err
    assert not (tmp_path / "studies" / "bad" / "trials").exists()


def test_bad_input_names_the_wrong_value_and_the_valid_choices(tmp_path, capsys):
    args = ["study", "run", "--config", str(write_study(tmp_path, "bad", seeds=["a"]))]
    with pytest.raises(SystemExit):
        main(args)
    assert "seeds" in last_line(capsys.readouterr().err)
    args = ["study", "run", "--config", str(write_study(tmp_path, "bad", isolation="thread"))]
    with pytest.raises(SystemExit):
        main(args)
    line = last_line(capsys.readouterr().err)
    assert "isolation" in line and "warm" in line and "process" in line and "thread" in line


BN_POINT = {"name": "factored", "center": "batch", "scale": "batch_std", "squash": "none"}
ALPHA_POINT = {"name": "factored", "center": "batch", "scale": "alpha", "squash": "none"}  # BN with DyT's scale


@pytest.fixture(scope="module")
def seeded_study(tmp_path_factory):
    """A 2 x 2 design (BN's scale or DyT's alpha in the factored norm x two learning rates), 2 paired seeds."""
    folder = tmp_path_factory.mktemp("seeded")
    path = write_study(folder, "seeded", n_trials=4, seeds=[0, 1],
                       search_space={"model.norm": [BN_POINT, ALPHA_POINT], "model.optimizer.lr": [0.003, 0.001]},
                       reference={"scale": "batch_std"}, gap_from={"scale": "alpha"})
    result = run_cli(["study", "run", "--config", str(path)], cwd=folder, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return folder, result.stdout


@pytest.mark.slow
def test_seeds_run_every_configuration_once_per_seed_paired(seeded_study):
    folder, stdout = seeded_study
    study = load(folder, "seeded")
    assert "4/4 configurations x 2 seeds (8 complete)" in stdout
    assert all(t.state == TrialState.COMPLETE for t in study.trials) and len(study.trials) == 8
    by_config: dict[str, set] = {}
    for t in study.trials:
        by_config.setdefault(json.dumps(t.params, sort_keys=True), set()).add(t.user_attrs["seed"])
        run_dir = Path(t.user_attrs["run_dir"])
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed_everything"] == t.user_attrs["seed"]
        assert f"--seed_everything={t.user_attrs['seed']}" in (run_dir / "command.txt").read_text()
        assert 0 < t.user_attrs["fit_s"] < t.user_attrs["wall_time_s"]  # the callback timed the fit
        assert t.user_attrs["last_epoch"]["train/loss_epoch"] > 0 and "val/acc" in t.user_attrs["last_epoch"]
    assert list(by_config.values()) == [{0, 1}] * 4  # the same seeds for every configuration


@pytest.mark.slow
def test_report_of_a_seeded_study_compares_means_with_intervals(seeded_study, capsys):
    folder, _ = seeded_study
    main(["study", "report", "seeded", "--root", str(folder / "studies")])
    out = folder / "studies" / "seeded"
    report = (out / "report.md").read_text()
    assert "## Configurations (mean over seeds)" in report and "Δ row − reference [95% CI]" in report
    rows = [r for r in report.splitlines() if r.startswith(("| BatchNorm", "| BN center only"))]
    assert len(rows) == 4 and sum("| reference" in r for r in rows) == 2  # BN is its own reference at each lr
    assert "## Factor effects" in report and "alpha - batch_std" in report  # arm - reference, as Δ
    assert "`dyt-lab study confirm seeded --top 3 --seeds 10..14`" in report  # one norm name: the top three
    assert "## The gap, factor by factor" in report and "scale (alpha -> batch_std)" in report
    assert (out / "main_effects.png").stat().st_size > 0
    seed_runs = (out / "seed_runs.csv").read_text().strip().splitlines()
    assert len(seed_runs) == 9 and seed_runs[0].startswith("center,name,scale,squash,")  # header + 8 seed runs


def search_values(folder: Path) -> dict[str, list]:
    """The seeded search's values by configuration (its params as sorted JSON), one per seed run."""
    values: dict[str, list] = {}
    for t in load(folder, "seeded").trials:
        values.setdefault(json.dumps(t.params, sort_keys=True), []).append(t.value)
    return values


@pytest.mark.slow
def test_confirm_reruns_the_best_and_the_reference_on_fresh_seeds_and_resumes(seeded_study, capsys):
    folder, _ = seeded_study
    root = str(folder / "studies")
    means = search_values(folder)
    best_alpha = max((k for k in means if "alpha" in k and "batch_std" not in k), key=lambda k: sum(means[k]))
    best_bn = max((k for k in means if "batch_std" in k), key=lambda k: sum(means[k]))
    args = ["study", "confirm", "seeded", "--top", "1", "--seeds", "5..6", "--root", root, "--workers", "1"]
    main(args)
    assert "2/2 configurations x 2 seeds (4 complete)" in capsys.readouterr().out
    confirmed = optuna.load_study(study_name="seeded.confirm", storage=f"sqlite:///{folder / 'studies' / 'seeded.confirm' / 'study.db'}")
    runs = {(json.dumps(t.params, sort_keys=True), t.user_attrs["seed"]) for t in confirmed.trials}
    assert runs == {(k, s) for k in (best_alpha, best_bn) for s in (5, 6)}  # the winner and BN at its best
    assert all(t.state == TrialState.COMPLETE and 0 <= t.user_attrs["test"]["test/acc"] <= 1 for t in confirmed.trials)
    main(args)  # again: everything ran, so it resumes to its end and runs nothing
    assert "(4 complete)" in capsys.readouterr().out and len(confirmed.get_trials()) == 4
    main(["study", "report", "seeded", "--root", root])
    report = (folder / "studies" / "seeded" / "report.md").read_text()
    assert "## Confirmed on fresh seeds" in report and "seeds [5, 6]" in report and "confirmed test/acc mean" in report
    assert "the best configuration of the search and its best reference configuration" in report
    assert "Not confirmed" not in report
    # the confirmed difference again with the test images' sampling: the same Δ, in points
    seed_level = next(line for line in report.splitlines() if line.startswith("- ") and "p = " in line)
    crossed = report.split("The same differences over seeds × test images")[1].splitlines()
    crossed_line = next(line for line in crossed if line.startswith("- "))
    assert float(crossed_line.split(": ")[1].split(" points")[0]) == pytest.approx(
        100 * float(seed_level.split(": ")[1].split(" ")[0]), abs=0.01)
    assert "seeds [5, 6], 180 images" in report


@pytest.mark.parametrize("args, expected", [
    (["nosuch", "--top", "1", "--seeds", "5..6"], "error: no study 'nosuch' to confirm"),
    (["seeded", "--top", "9", "--seeds", "5..6"], "error: --top 9: study 'seeded' has 2 completed configurations"),
    (["seeded", "--top", "1", "--seeds", "1..3"], "error: --seeds 1..3 overlaps the seeds the search ran ([1])"),
    (["seeded", "--top", "1", "--seeds", "five"], "error: --seeds 'five': give a range like 10..14"),
    (["seeded", "--top", "x"], "error: study confirm: "),
    (["seeded", "--top", "1", "--seeds", "5..6", "--base.overrides.trainer.max_epochs=1"],
     "error: --config and --base.overrides.* change the setting: give --tag NAME"),
    (["seeded", "--top", "1", "--seeds", "5..6", "--tag", "x", "--config", "nosuch.yaml"],
     "error: --config 'nosuch.yaml' is not a file"),
    (["seeded", "--top", "1", "--seeds", "5..6", "--tag", "a b"], "error: --tag 'a b' must be letters"),
    (["seeded", "--ablate", "--per", "name", "--seeds", "5..6"], "error: --ablate takes the single best configuration"),
])
@pytest.mark.slow
def test_confirm_refuses_bad_input_in_one_line_and_writes_nothing(seeded_study, capsys, args, expected):
    folder, _ = seeded_study
    before = sorted(p.name for p in (folder / "studies").iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "confirm", *args, "--root", str(folder / "studies")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and last_line(err).startswith(expected) and "Traceback" not in err
    assert sorted(p.name for p in (folder / "studies").iterdir()) == before


@pytest.mark.slow
def test_confirm_elsewhere_reruns_the_same_winners_with_the_other_setting_and_compare_pairs_them(seeded_study, capsys):
    folder, _ = seeded_study
    root = str(folder / "studies")
    main(["study", "confirm", "seeded", "--top", "1", "--seeds", "5..6", "--root", root, "--workers", "1"])
    main(["study", "confirm", "seeded", "--top", "1", "--seeds", "5..6", "--root", root, "--workers", "1",
          "--tag", "short", "--base.overrides.trainer.max_epochs=1"])
    capsys.readouterr()
    plain, short = load(folder, "seeded.confirm"), load(folder, "seeded.confirm.short")
    as_key = lambda t: (json.dumps(t.params, sort_keys=True), t.user_attrs["seed"])  # noqa: E731
    assert {as_key(t) for t in short.trials} == {as_key(t) for t in plain.trials}  # the same winners and seeds
    for trial in short.trials:  # ... in the other setting: one epoch instead of two
        assert yaml.safe_load((Path(trial.user_attrs["run_dir"]) / "config.yaml").read_text())["trainer"]["max_epochs"] == 1
        assert trial.user_attrs["epochs"] == 1
    main(["study", "report", "seeded.confirm.short", "--root", root])
    report = (folder / "studies" / "seeded.confirm.short" / "report.md").read_text()
    assert "A confirmation of study `seeded`" in report and "Not confirmed" not in report
    assert "with `trainer.max_epochs=1` after the search's configs" in report
    with pytest.raises(SystemExit) as exit_info:  # the same tag in another setting would mix two settings
        main(["study", "confirm", "seeded", "--top", "1", "--seeds", "5..6", "--root", root, "--tag", "short",
              "--base.overrides.trainer.max_epochs=3"])
    assert exit_info.value.code == 2 and "give another --tag for another setting" in last_line(capsys.readouterr().err)
    assert len(load(folder, "seeded.confirm.short").trials) == 4

    main(["study", "compare", "seeded.confirm.short", "seeded.confirm", "--root", root])
    written = (folder / "studies" / "seeded.confirm.short" / "versus_seeded.confirm.md").read_text()
    assert written.strip() in capsys.readouterr().out
    test_acc = lambda study: {(json.dumps(t.params, sort_keys=True), t.user_attrs["seed"]): t.user_attrs["test"]["test/acc"]  # noqa: E731
                              for t in study.trials}
    ours, theirs = test_acc(short), test_acc(plain)
    configs = sorted({k for k, _ in theirs})
    best = max(configs, key=lambda c: theirs[(c, 5)] + theirs[(c, 6)])
    for config in configs:  # each row's Δ is the mean of its two per-seed differences to the other study's best
        delta = sum(ours[(config, s)] - theirs[(best, s)] for s in (5, 6)) / 2
        assert sum(f"| {delta:+.4f} |" in row for row in written.splitlines()) >= 1
    seed_level = written.split("## Over seeds and test images")[0]  # then the same pairs with the test images
    rows = [[cell.strip() for cell in row.split("|")[1:-1]] for row in seed_level.splitlines() if row.startswith("| ")]
    assert [r[1] for r in rows[2:]] == ["2", "2"]  # header, rule, then two configurations of two pairs each

    with pytest.raises(SystemExit) as exit_info:  # the search ran seeds 0-1, the confirmation 5-6: no pair
        main(["study", "compare", "seeded", "seeded.confirm", "--root", root])
    assert exit_info.value.code == 2
    assert "share no seed: nothing to pair" in last_line(capsys.readouterr().err)


@pytest.mark.slow
def test_ablate_runs_the_best_and_each_one_factor_neighbour_against_it(seeded_study, capsys):
    folder, _ = seeded_study
    root = str(folder / "studies")
    search = load(folder, "seeded")
    means = search_values(folder)
    best = json.loads(max((k for k in means if "batch_std" not in k), key=lambda k: sum(means[k])))  # not the reference
    norms = {t.params["model.norm"] for t in search.trials}
    rates = {t.params["model.optimizer.lr"] for t in search.trials}
    expected = [best, {**best, "model.norm": (norms - {best["model.norm"]}).pop()},
                {**best, "model.optimizer.lr": (rates - {best["model.optimizer.lr"]}).pop()}]
    main(["study", "confirm", "seeded", "--ablate", "--seeds", "8..9", "--root", root, "--workers", "1"])
    assert "3/3 configurations x 2 seeds (6 complete)" in capsys.readouterr().out
    ablation = load(folder, "seeded.confirm.ablation")
    ran = sorted({json.dumps(t.params, sort_keys=True) for t in ablation.trials})
    assert ran == sorted(json.dumps(e, sort_keys=True) for e in expected)
    assert ablation.user_attrs["design"]["reference"] == {"scale": "alpha", "model.optimizer.lr": best["model.optimizer.lr"]}
    main(["study", "report", "seeded.confirm.ablation", "--root", root])
    report = (folder / "studies" / "seeded.confirm.ablation" / "report.md").read_text()
    assert "its one-factor neighbours, each compared with the best" in report
    assert sum("| reference" in row for row in report.splitlines()) == 1  # the best is the one reference


def test_the_objective_metric_check_refuses_only_what_a_dyt_lab_model_cannot_log():
    """Conservative: a name under val/, train/, test/ that the model's own source never logs; not a name
    elsewhere (a callback's), nor anything once a class of the user's own could log it."""
    from types import SimpleNamespace

    from dyt_lab.errors import ConfigError
    from dyt_lab.study.engine.precheck import check_objective_metric
    from dyt_lab.training.module import ResNetClassifier

    class MyClassifier(ResNetClassifier):  # a user's own subclass, which may log val/f1
        pass

    def run_of(cls):
        return SimpleNamespace(model=cls.__new__(cls), trainer=SimpleNamespace(callbacks=[]))

    space = SearchSpace({"model.norm": ["dyt", "derf"]})
    for metric in ("val/acc", "val/loss", "val/acc_best", "train/acc", "norms/stem.norm/alpha", "lr-AdamW"):
        check_objective_metric(metric, run_of(ResNetClassifier), space)
    for metric in ("val/f1", "val/accuracy", "test/acc"):
        check_objective_metric(metric, run_of(MyClassifier), space)
    check_objective_metric("val/f1", run_of(ResNetClassifier), SearchSpace({"model": ["a", "b"]}))  # swaps the class
    with pytest.raises(ConfigError, match="^objective.metric 'val/f1' is not a metric ResNetClassifier logs"):
        check_objective_metric("val/f1", run_of(ResNetClassifier), space)


def test_confirm_chooses_the_top_k_or_every_arm_at_its_best():

    from dyt_lab.errors import ConfigError
    from dyt_lab.study.engine.confirm import choose

    study = optuna.create_study(direction="maximize")
    space = SearchSpace({"model.norm": ["batchnorm", "dyt", "derf"], "model.optimizer.lr": [0.002, 0.008]})
    dists = space.distributions
    means = {("batchnorm", 0.002): 0.97, ("batchnorm", 0.008): 0.98, ("dyt", 0.002): 0.88, ("dyt", 0.008): 0.94,
             ("derf", 0.002): 0.90, ("derf", 0.008): 0.93}
    for (norm, lr), mean in means.items():
        for seed, shift in ((0, -0.01), (1, 0.01)):
            study.add_trial(optuna.trial.create_trial(params={"model.norm": norm, "model.optimizer.lr": lr},
                                                      distributions=dists, value=mean + shift, user_attrs={"seed": seed}))
    picked = lambda chosen: [(e["levels"]["model.norm"], e["levels"]["model.optimizer.lr"]) for e in chosen]  # noqa: E731
    assert picked(choose(study, space, 2, {"model.norm": "batchnorm"})) == [("dyt", 0.008), ("derf", 0.008), ("batchnorm", 0.008)]
    assert picked(choose(study, space, 1, None, per="model.norm")) == [("batchnorm", 0.008), ("dyt", 0.008), ("derf", 0.008)]
    with pytest.raises(ConfigError, match="--per 'norm' is not a factor of study .*; factors: model.norm, model.optimizer.lr"):
        choose(study, space, 1, None, per="norm")


def test_confirm_of_a_study_with_no_finished_trial_is_one_line(tmp_path, capsys):
    folder = tmp_path / "studies" / "empty"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(write_study(tmp_path, "empty", seeds=[0, 1]).read_text())
    optuna.create_study(study_name="empty", storage=f"sqlite:///{folder / 'study.db'}")
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "confirm", "empty", "--top", "1", "--seeds", "5..6", "--root", str(tmp_path / "studies")])
    assert exit_info.value.code == 2
    assert last_line(capsys.readouterr().err) == "error: study 'empty' has no completed trial to confirm"


@pytest.mark.slow
def test_killing_a_trial_fails_it_alone_and_the_study_goes_on(tmp_path):
    # 40 tiny epochs: long enough that the trial is still running when its first epoch's result appears
    # (with 6 it could end first on a loaded machine, and the kill found no process).
    path = write_study(tmp_path, "trialkill", n_trials=2,
                       base={"configs": [BASE], "overrides": {**TINY, "trainer.max_epochs": 40}})
    proc = subprocess.Popen([sys.executable, "-m", "dyt_lab", "study", "run", "--config", str(path)], cwd=tmp_path,
                            env=_python_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trials = tmp_path / "studies" / "trialkill" / "trials"
    deadline = time.monotonic() + 300
    while not list(trials.glob("trial_0000*/study_result.json")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    trial = next(t for t in load(tmp_path, "trialkill").trials if t.number == 0)
    os.kill(trial.user_attrs["trial_pid"], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    # The study went on, then says that one run has no completed trial (a rerun retries it)
    assert proc.returncode == 2 and last_line(stderr).startswith(
        "error: study trialkill: 1 run has no completed trial: trial 0 (model.norm=")
    study = load(tmp_path, "trialkill")
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["fail_reason"].startswith("killed by SIGKILL")
    assert study.trials[1].state == TrialState.COMPLETE and "trial 1 COMPLETE" in stdout


def test_missing_seed_runs_are_queued_once_and_a_retry_keeps_its_seed():
    from optuna.distributions import CategoricalDistribution

    from dyt_lab.study.definition.storage import make_retry
    from dyt_lab.study.engine.replicates import queue_missing_seeds, seeds_by_configuration

    study = optuna.create_study()
    dist = {"model.norm": CategoricalDistribution(["dyt", "derf"])}
    study.add_trial(optuna.trial.create_trial(params={"model.norm": "dyt"}, distributions=dist, value=0.5,
                                              user_attrs={"seed": 0}))
    failed = optuna.trial.create_trial(params={"model.norm": "derf"}, distributions=dist, state=TrialState.FAIL,
                                       user_attrs={"seed": 2})
    study.add_trial(failed)
    make_retry(3)(study, study.trials[1])  # a retry of the failed seed run, as the heartbeat does it
    assert queue_missing_seeds(study, [0, 1, 2]) == 2 + 2  # dyt lacks seeds 1, 2; derf lacks 0, 1 (2 is retried)
    assert queue_missing_seeds(study, [0, 1, 2]) == 0
    found = {json.loads(k)["model.norm"]: seeds for k, (_, seeds) in seeds_by_configuration(study).items()}
    assert found == {"dyt": {0, 1, 2}, "derf": {0, 1, 2}}
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted((t.params["model.norm"], t.user_attrs["seed"]) for t in waiting) == [
        ("derf", 0), ("derf", 1), ("derf", 2), ("dyt", 1), ("dyt", 2)]


def test_the_optuna_internals_we_use_still_exist():
    """Each internal optuna_internals.py declares, used as the study uses it (stale_trial_ids: the next test)."""
    from dyt_lab.study.definition.storage import trial_id
    from dyt_lab.study.optuna_internals import grid_point, reopen_trial

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    asked = study.ask()
    tid = trial_id(storage, study.study_name, asked.number)  # public: the storage's id by study and number
    again = reopen_trial(study, tid)  # as a trial's own fit process does it
    again.report(0.5, step=0)
    assert storage.get_trial(tid).intermediate_values == {0: 0.5} and storage.get_trial(tid).number == asked.number

    # A seed run queued for a grid point keeps that point; the grid's other point is still the next one asked.
    grid = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [0, 1]}, seed=0))
    first = grid.ask()
    first.suggest_categorical("x", [0, 1])
    grid.tell(first, 1.0)
    done = grid.trials[0]
    assert set(grid_point(done)) == {"grid_id", "search_space"}
    grid.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=done.params,
                                             distributions=done.distributions, system_attrs=grid_point(done)))
    seed_run = grid.ask()
    assert seed_run.suggest_categorical("x", [0, 1]) == done.params["x"]
    grid.tell(seed_run, 1.0)
    assert not grid.sampler.is_exhausted(grid)
    assert grid.ask().suggest_categorical("x", [0, 1]) == 1 - done.params["x"]


def test_a_databases_stale_trials_are_found_by_optunas_own_test(tmp_path):
    import time

    from dyt_lab.study.definition.storage import open_storage, trial_id
    from dyt_lab.study.optuna_internals import stale_trial_ids

    memory = optuna.storages.InMemoryStorage()
    plain = optuna.create_study(storage=memory)
    assert stale_trial_ids(memory, memory.get_study_id_from_name(plain.study_name)) == []  # no heartbeat: never stale
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    asked = study.ask()
    storage.record_heartbeat(trial_id(storage, study.study_name, asked.number))
    assert stale_trial_ids(storage, study_id) == []
    time.sleep(2.2)  # past the grace period, without a beat
    assert stale_trial_ids(storage, study_id) == [trial_id(storage, study.study_name, asked.number)]


def test_trials_that_run_ddp_are_recognised_so_they_start_as_fresh_processes(tmp_path):
    """From the Trainers the up-front check builds: a strategy that starts processes, whatever flag asked for it."""
    from lightning.pytorch import Trainer

    from dyt_lab.study.definition.study_file import load_spec
    from dyt_lab.study.engine.precheck import check_trials, runs_ddp

    def trainer(**flags):
        return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, **{"devices": 1, **flags})

    assert not runs_ddp(trainer()) and not runs_ddp(trainer(devices="auto"))
    assert runs_ddp(trainer(devices=2)) and runs_ddp(trainer(num_nodes=2))
    assert runs_ddp(trainer(strategy="ddp_spawn")) and runs_ddp(trainer(strategy="ddp"))

    def study_runs_ddp(search_space: dict) -> bool:
        spec = load_spec(["--config", str(write_study(tmp_path, "ddp", search_space=search_space))])
        return check_trials(spec, SearchSpace(spec.search_space), gpus=0)

    assert not study_runs_ddp({"model.norm": ["dyt", "derf"]})
    assert study_runs_ddp({"trainer.devices": [1, 2]})  # one value of several is enough
    assert study_runs_ddp({"trainer.strategy": ["auto", "ddp_spawn"]})


def test_alpha_spending_releases_little_early_and_all_of_alpha_by_the_last_look():
    from dyt_lab.study.engine.sequential import look_levels, spent

    levels = look_levels(batch=5, max_seeds=20)
    assert [n for n, _ in levels] == [5, 10, 15, 20]
    assert sum(level for _, level in levels) == pytest.approx(0.05)
    assert spent(1.0) == pytest.approx(0.05) and levels[0][1] < 1e-4 < levels[1][1] < levels[-1][1]
    assert [n for n, _ in look_levels(batch=3, max_seeds=7)] == [3, 6, 7]  # the last look takes what is left


@pytest.mark.slow
def test_confirm_with_seeds_auto_adds_seeds_look_by_look_at_the_spent_level(seeded_study, capsys):
    folder, _ = seeded_study
    root = str(folder / "studies")
    main(["study", "confirm", "seeded", "--top", "1", "--seeds", "auto", "--max_seeds", "4", "--batch", "2",
          "--root", root, "--workers", "1", "--tag", "seq"])
    out = capsys.readouterr().out
    study = load(folder, "seeded.confirm.seq")
    record = study.user_attrs["sequential"]
    assert record["max_seeds"] == 4 and record["spending"] == "obrien_fleming"
    looks = record["looks"]
    assert [look["seeds"] for look in looks] in ([2], [2, 4])  # it stops at the first look that decides all
    seeds_run = {t.user_attrs["seed"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert seeds_run == set(range(10, 10 + looks[-1]["seeds"]))
    assert looks[0]["level"] < 0.01 and f"look 1: 2 seeds, level {looks[0]['level']:.2g}" in out
    assert (len(looks) == 1) == all(v in ("better", "worse", "equivalent") for v in looks[0]["verdicts"].values())


@pytest.mark.parametrize("args, expected", [
    (["--seeds", "auto"], "error: --seeds auto needs --max_seeds N"),
    (["--seeds", "auto", "--max_seeds", "4", "--batch", "1"], "error: --batch 1: give 2 or more"),
    (["--seeds", "10..11", "--max_seeds", "4"], "error: --max_seeds and --batch go with --seeds auto"),
])
def test_seeds_auto_bad_input_is_one_line(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "confirm", "nosuch", "--root", str(tmp_path), *args])
    assert exit_info.value.code == 2 and last_line(capsys.readouterr().err).startswith(expected)


def made_study(root: Path, name: str, search_space: dict, runs: list[tuple[dict, int, float, float]],
               reference: dict | None = None, metric: str = "val/acc") -> str:
    """A seeded study written straight into storage, no training: each run is (params, seed, value, last
    training loss). For report tests that need a study of a known shape in well under a second."""
    from optuna.trial import create_trial

    space, folder = SearchSpace(search_space), root / name
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump({"search_space": search_space}))
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    study.set_user_attr("objective", {"metric": metric, "value": "best"})
    study.set_user_attr("design", {"seeds": sorted({s for _, s, _, _ in runs}), "reference": reference,
                                   "gap_from": None, "margin": 0.005})
    for params, seed, value, loss in runs:
        study.add_trial(create_trial(params=params, distributions={k: space.distributions[k] for k in params},
                                     value=value, user_attrs={"seed": seed, "last_epoch": {
                                         "val/acc": value, "train/loss_epoch": loss}}))
    return str(root)


def section(report: str, title: str) -> str:
    """The text of one ``## title`` section of a report."""
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


NORM_LR = {"model.norm": ["dyt", "derf"], "model.optimizer.lr": [0.003, 0.001], "model.alpha_init": [0.5, 1.0]}
# dyt beats derf by 4 points, the higher lr adds 1; seed 1 a point above seed 0; alpha_init held at 0.5
NORM_LR_RUNS = [({"model.norm": n, "model.optimizer.lr": lr, "model.alpha_init": 0.5}, s,
                 0.80 + 0.04 * (n == "dyt") + 0.01 * (lr == 0.003) + 0.01 * s + 0.003 * (n == "dyt" and s == 1), 0.3 + 0.1 * s)
                for n in ("dyt", "derf") for lr in (0.003, 0.001) for s in (0, 1, 2)]


def test_importances_rank_only_the_keys_that_varied_and_say_when_fewer_than_two_did(tmp_path, capsys):
    root = made_study(tmp_path, "held", NORM_LR, NORM_LR_RUNS)
    main(["study", "report", "held", "--root", root])
    table = section((tmp_path / "held" / "report.md").read_text(), "Parameter importances")
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| model.")]
    assert sorted(rows) == ["model.norm", "model.optimizer.lr"]  # alpha_init took one value: no share
    one = [run for run in NORM_LR_RUNS if run[0]["model.optimizer.lr"] == 0.003]
    main(["study", "report", "one", "--root", made_study(tmp_path, "one", NORM_LR, one)])
    table = section((tmp_path / "one" / "report.md").read_text(), "Parameter importances")
    assert "only `model.norm` varied" in table and "`model.alpha_init`, `model.optimizer.lr` held one value" in table
    assert "| model.norm" not in table and not (tmp_path / "one" / "importances.png").exists()
    capsys.readouterr()


def test_compare_shows_the_real_interval_and_names_a_single_configuration(tmp_path, capsys):
    """One arm loses about 0.47 on two seeds; the other is 8 images of 500 below the reference on both seeds, which
    float32 turns into two differences 6e-8 apart. That near-tie read as a zero-width interval (and 'worse'),
    made Bartlett refuse to pool, and the first arm's t-interval on one degree of freedom was cut to [-1.0000, ...]."""
    import numpy as np

    f32 = lambda k: float(np.float32(k / 500))  # noqa: E731  an accuracy as a run logs it
    space = {"model.norm": ["dyt", "derf"], "model.alpha_init": [0.5]}
    ours = [({"model.norm": "dyt", "model.alpha_init": 0.5}, 0, f32(422) - 0.4, 1.0),
            ({"model.norm": "dyt", "model.alpha_init": 0.5}, 1, f32(421) - 0.53, 1.0),
            ({"model.norm": "derf", "model.alpha_init": 0.5}, 0, f32(414), 1.0),
            ({"model.norm": "derf", "model.alpha_init": 0.5}, 1, f32(413), 1.0)]
    theirs = [({"model.norm": "dyt"}, s, f32(422 - s), 1.0) for s in (0, 1)]
    made_study(tmp_path, "ours", space, ours)
    root = made_study(tmp_path, "theirs", {"model.norm": ["dyt"]}, theirs)
    main(["study", "compare", "ours", "theirs", "--root", root])
    text = (tmp_path / "ours" / "versus_theirs.md").read_text()
    capsys.readouterr()
    assert "the only one" not in text and "best configuration of `theirs` (model.norm=dyt, mean" in text
    rows = {r[0]: r for r in ([c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
                              if line.startswith("| model.norm="))}
    low, high = (float(x) for x in rows["model.norm=dyt"][5].strip("[]").split(", "))
    assert rows["model.norm=dyt"][4] == "-0.4650" and -1 < low < high < 0  # pooled over both arms: 2 df
    low, high = (float(x) for x in rows["model.norm=derf"][5].strip("[]").split(", "))
    assert low < -0.016 < high and high - low > 0.1  # the tie takes the pooled spread: no zero width


def figure_texts(monkeypatch) -> dict[str, dict]:
    """Record, per file name, the texts of every figure the report's plots save: titles, axis labels, legends, ticks."""
    from dyt_lab.study.report import plots

    seen: dict[str, dict] = {}
    save = plots.save_figure

    def recording(ax_or_axes, path):
        axes = list(ax_or_axes.flat) if hasattr(ax_or_axes, "flat") else [ax_or_axes]
        seen[path.name] = {"legend": [t.get_text() for ax in axes if ax.get_legend() for t in ax.get_legend().get_texts()],
                           "labels": [ax.get_xlabel() for ax in axes] + [ax.get_ylabel() for ax in axes],
                           "yticks": [t.get_text() for t in axes[0].get_yticklabels()]}
        return save(ax_or_axes, path)

    monkeypatch.setattr(plots, "save_figure", recording)
    return seen


def test_a_seeded_reports_plots_are_per_configuration_and_its_files_are_the_files_there(tmp_path, monkeypatch, capsys):
    seen = figure_texts(monkeypatch)
    space = {"model.optimizer.lr": [0.003, 0.001], "model.alpha_init": [0.5, 1.0]}
    runs = [({"model.optimizer.lr": lr, "model.alpha_init": a}, s, 0.8 + 0.03 * (lr == 0.003) - 0.02 * (a == 1.0)
             + 0.004 * s + 0.001 * (s == 1 and a == 0.5), 0.2) for lr in (0.003, 0.001) for a in (0.5, 1.0) for s in range(3)]
    main(["study", "report", "plain", "--root", made_study(tmp_path, "plain", space, runs)])
    capsys.readouterr()
    folder = tmp_path / "plain"
    report = (folder / "report.md").read_text()
    listed = [line[3:-1] for line in section(report, "Files").splitlines() if line.startswith("- `")]
    assert listed and all((folder / name).is_file() for name in listed)
    assert "placement" not in section(report, "Files")  # no norm or placement key: no such plot, and no line of it
    assert not list(folder.glob("objective_vs_*.png"))  # Optuna's slices plot one seed run per point
    assert len(seen["configurations.png"]["yticks"]) == 4 and "95% t-interval over seeds" in seen["configurations.png"]["labels"][0]
    assert "`configurations.png`" in section(report, "Configurations (mean over seeds)")
    assert seen["importances.png"]["legend"] == ["val/acc (best)"]  # the metric, not "Objective Value"
    assert seen["main_effects.png"]["legend"] == ["mean, 95% t-interval over seeds"]


def test_the_report_of_a_factorial_with_a_reference_prints_no_warning(tmp_path, capsys):
    """What a new user saw: pandas' reindexing warning twice per report, and matplotlib's tight-layout one for the
    placement x variant heatmap of norm specs (long labels). A whole report, warnings as errors."""
    import warnings

    from dyt_lab.study.definition.space import choice_label

    space = {"model.norm": [BN_POINT, ALPHA_POINT], "model.optimizer.lr": [0.003, 0.001]}
    runs = [({"model.norm": choice_label(norm), "model.optimizer.lr": lr}, s,
             0.9 + 0.05 * (norm is BN_POINT) + 0.01 * (lr == 0.003) + 0.003 * s + 0.002 * (s == 1 and norm is ALPHA_POINT), 0.1)
            for norm in (BN_POINT, ALPHA_POINT) for lr in (0.003, 0.001) for s in range(3)]
    root = made_study(tmp_path, "fact", space, runs, reference={"scale": "batch_std"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        main(["study", "report", "fact", "--root", root])
    report = (tmp_path / "fact" / "report.md").read_text()
    capsys.readouterr()
    assert "## Factor effects" in report and "| alpha - batch_std |" in report
    assert (tmp_path / "fact" / "placement_x_variant.png").is_file()
