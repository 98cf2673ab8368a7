"""The four Optuna internals a study needs, in one place, because Optuna has no public API for them.

- A trial's storage id (``Trial._trial_id``): a trial process reports to its trial by id, and a
  worker fails a dead worker's trial by id. Optuna's public ``study.tell`` works only for trials
  the calling process asked for, and a trial's ``number`` is not what the storage methods take.
- A study's storage (``Study._storage``): to fail another process's RUNNING trial and to write the
  journal heartbeat, which Optuna itself does only for database storages.
- Reopening a live trial by id in another process (``optuna.trial.Trial(study, trial_id)``): the
  pruning callback runs inside the trial's own fit process, not in the worker that asked.
- Asking and telling as ``study.optimize`` does (``Study._thread_local.in_optimize_loop``): the
  worker runs one trial by ``ask`` and ``tell`` (``runner.run_trial``), and inside a tell the
  GridSampler calls ``study.stop()`` once its grid is done, which Optuna refuses outside optimize.

``tests/test_study.py::test_the_optuna_internals_we_use_still_exist`` (and, for the last,
``tests/test_study_faults.py::test_a_tell_as_in_optimize_lets_the_grid_sampler_stop``) fails loudly
if an Optuna release renames or changes any of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import optuna


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (not its number)."""
    return trial._trial_id


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage behind a study."""
    return study._storage


def reopen_trial(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """A live ``Trial`` for a RUNNING trial that another process asked for."""
    return optuna.trial.Trial(study, trial_id)


@contextmanager
def in_optimize_loop(study: optuna.Study) -> Iterator[None]:
    """Ask and tell inside this as inside ``study.optimize``: ``study.stop()`` is allowed (a sampler's
    way to say it is done; nothing here reads it), and ``ask`` does not warn that a storage's
    heartbeat belongs to optimize (``run_trial`` beats it)."""
    local = study._thread_local
    before, local.in_optimize_loop = local.in_optimize_loop, True
    try:
        yield
    finally:
        local.in_optimize_loop = before


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """Ids of a database study's RUNNING trials whose heartbeat is older than the storage's grace period:
    Optuna's own test (``RDBStorage._get_stale_trial_ids``, on the database's clock), which its
    ``fail_stale_trials`` runs before failing those trials without a reason. Empty without a heartbeat."""
    storage = study._storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:
        return []
    return storage._get_stale_trial_ids(study._study_id)
