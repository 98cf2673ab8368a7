"""Optuna studies as a user runs them (``study/engine/``): real trials (a tiny ResNet on digits), pruning, a
diverged trial, kill -9 and resume, two workers on a journal, a killed trial; what the up-front check
(``engine/precheck.py``) refuses or recognises; seed runs queued once (``engine/replicates.py``)."""

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
from optuna.trial import TrialState

from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.space import SearchSpace, saved_space
from dyt_lab.study.definition.storage import make_retry, retried_trial_number
from dyt_lab.study.definition.study_file import load_spec
from dyt_lab.study.engine.objective import trial_dir_name
from tests.helpers import last_line, run_cli
from tests.study.helpers import BASE, TINY, counted, load, write_study


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


def test_the_objective_metric_check_refuses_only_what_a_dyt_lab_model_cannot_log():
    """Conservative: a name under val/, train/, test/ that the model's own source never logs; not a name
    elsewhere (a callback's), nor anything once a class of the user's own could log it."""
    from types import SimpleNamespace

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


def test_trials_that_run_ddp_are_recognised_so_they_start_as_fresh_processes(tmp_path):
    """From the Trainers the up-front check builds: a strategy that starts processes, whatever flag asked for it."""
    from lightning.pytorch import Trainer

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


def test_missing_seed_runs_are_queued_once_and_a_retry_keeps_its_seed():
    from optuna.distributions import CategoricalDistribution

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
