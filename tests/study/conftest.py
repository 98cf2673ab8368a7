"""The study's fixtures: the pruned study (run once per test session), a journal study whose trials are stand-ins
(``study_env``), and in-process ``dyt-lab study`` commands whose trials are stand-ins (``fake_runs``)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import optuna
import pytest

from dyt_lab.study.definition.storage import open_storage
from dyt_lab.study.definition.study_file import load_spec
from dyt_lab.study.engine import objective as objective_module
from dyt_lab.study.engine import prepare as prepare_module
from tests.helpers import run_cli, shared_folder
from tests.study.helpers import BASE, TINY, EndedTrial, write_journal_study, write_study


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory):
    """4 trials of a grid over lr x alpha0: lr 0.003 learns, 1e-12 does not (pruned), 1e30 diverges.

    The grid's order is fixed by its seed; seed 3 runs (alpha0, lr) = (1, 0.003), (1, 1e30),
    (1, 1e-12), (0.5, 1e-12): a completed trial first, so the median pruner has a reference.
    Run once per test session even when xdist spreads its tests over workers (``shared_folder``: a shared
    folder and a file lock, as xdist's documentation does it for session fixtures).
    """
    def run(folder: Path) -> None:
        path = write_study(folder, "pruned", n_trials=4, sampler={"name": "grid", "seed": 3},
                           base={"configs": [BASE], "overrides": {**TINY, "trainer.limit_train_batches": 8}},
                           search_space={"model.optimizer.lr": [0.003, 1.0e-12, 1.0e30],
                                         "model.alpha_init": [0.5, 1.0]},
                           objective={"metric": "val/loss", "direction": "minimize"},
                           pruner={"name": "median", "kwargs": {"n_startup_trials": 1}})
        result = run_cli(["study", "run", "--config", str(path)], cwd=folder, timeout=400)
        assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
        (folder / "run.json").write_text(json.dumps({"stdout": result.stdout, "stderr": result.stderr}))

    folder = shared_folder(tmp_path_factory, "pruned_study", run)
    return folder, json.loads((folder / "run.json").read_text())["stdout"]


@pytest.fixture
def study_env(tmp_path, monkeypatch):
    """A journal study (created, no trials), its spec, and trial processes replaced by EndedTrial.

    ``env.trials`` lists what each trial start does: an EndedTrial's keyword arguments, or an
    exception to raise; the last entry repeats.
    """
    spec = load_spec(["--config", str(write_journal_study(tmp_path, "faults"))])
    spec.folder.mkdir(parents=True)
    journal = str(spec.folder / "journal.log")
    optuna.create_study(study_name=spec.study_name, storage=open_storage(journal),
                        direction=spec.objective.direction)

    class Env:
        trials: list = [{}]
        started: list[Path] = []

    def start_trial(isolation, fit_args, env, run_dir):
        how = Env.trials.pop(0) if len(Env.trials) > 1 else Env.trials[0]
        Env.started.append(run_dir)
        if isinstance(how, BaseException):
            raise how
        return EndedTrial(run_dir, env, **how)

    monkeypatch.setattr(objective_module, "start_trial", start_trial)
    sigterm = signal.getsignal(signal.SIGTERM)  # work() installs its own
    Env.spec, Env.journal = spec, journal
    yield Env
    signal.signal(signal.SIGTERM, sigterm)


@pytest.fixture
def fake_runs(monkeypatch):
    """``dyt-lab study ...`` in this process with trial processes replaced by EndedTrial: ``fake_runs.trials``
    lists each start's keyword arguments (the last repeats), ``fake_runs.started`` counts the starts. The up-front
    build of every trial is skipped (other tests check it): these runs are about what runs, not what builds."""
    class Runs:
        trials: list = [{}]
        started = 0

    def start_trial(isolation, fit_args, env, run_dir):
        Runs.started += 1
        how = Runs.trials.pop(0) if len(Runs.trials) > 1 else Runs.trials[0]
        return EndedTrial(run_dir, env, **how)

    monkeypatch.setattr(objective_module, "start_trial", start_trial)
    monkeypatch.setattr(prepare_module, "check_trials", lambda *args: False)
    sigterm = signal.getsignal(signal.SIGTERM)
    yield Runs
    signal.signal(signal.SIGTERM, sigterm)
