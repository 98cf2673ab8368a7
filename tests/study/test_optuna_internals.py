"""The Optuna internals ``study/optuna_internals.py`` declares, each used as the study uses it: a failure here
means an Optuna release changed one (the module says which)."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from dyt_lab.study.definition.storage import open_storage, trial_id


def test_the_optuna_internals_we_use_still_exist():
    """Each internal optuna_internals.py declares, used as the study uses it (stale_trial_ids: the next test)."""
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

    from dyt_lab.study.definition.storage import trial_id
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


def test_a_tell_as_in_optimize_lets_the_grid_sampler_stop():
    """The Optuna internal run_trial needs: a GridSampler's tell of the grid's last point calls
    study.stop(), which Optuna allows only inside optimize (and its flag for that)."""
    from dyt_lab.study.optuna_internals import in_optimize_loop

    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [0]}))
    trial = study.ask()
    trial.suggest_categorical("x", [0])
    with pytest.raises(RuntimeError, match="Study.stop"):  # what a bare ask and tell meets
        study.tell(trial, 1.0, skip_if_finished=True)
    again = study.ask({"x": optuna.distributions.CategoricalDistribution([0])})
    with in_optimize_loop(study):
        study.tell(again, 1.0)
    assert study.trials[-1].state == TrialState.COMPLETE and not study._thread_local.in_optimize_loop
