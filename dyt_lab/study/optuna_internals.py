"""The Optuna internals a study needs, in one place, each because Optuna has no public API for it.

Everything else goes through public API: a trial's storage id through
``storage.get_trial_id_from_study_id_trial_number`` (``storage.trial_id``), the storage as the
object the worker opened (never dug out of a study), retries through
``RetryHeartbeatStaleTrialCallback``'s static methods (``storage.retry_history``).

- Reopening a live trial by id in another process (``optuna.trial.Trial(study, trial_id)``, a
  constructor Optuna documents as not for users): the pruning callback runs inside the trial's own
  fit process, not in the worker that asked, and ``report``/``should_prune`` exist only on ``Trial``.
- Asking and telling as ``study.optimize`` does (``Study._thread_local.in_optimize_loop``): the
  worker runs one trial by ``ask`` and ``tell`` (``worker.run_trial``), and inside a tell the
  GridSampler calls ``study.stop()`` once its grid is done, which Optuna refuses outside optimize.
- A database's stale trials (``RDBStorage._get_stale_trial_ids``): the reaper fails them with a
  reason, which Optuna's public ``fail_stale_trials`` does not record, on the database's own clock.
- A grid trial's point (system attributes ``grid_id`` and ``search_space``): a seed run queued
  for a grid configuration must carry its point, or ``GridSampler.before_trial`` gives it another
  unvisited point, which then never runs. Optuna's public ``enqueue_trial`` avoids that, but its
  WAITING trial has no params until it runs, so the queued seed runs could not be counted.

``tests/study/test_optuna_internals.py``: ``test_the_optuna_internals_we_use_still_exist`` (and, for in_optimize_loop,
``test_a_tell_as_in_optimize_lets_the_grid_sampler_stop``) fails loudly
if an Optuna release renames or changes any of them; ``pyproject.toml`` bounds Optuna to the releases
that test has passed on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.trial import FrozenTrial

GRID_POINT_ATTRS = ("grid_id", "search_space")  # what GridSampler.before_trial reads to keep a trial's point


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


def stale_trial_ids(storage: optuna.storages.BaseStorage, study_id: int) -> list[int]:
    """Ids of a database study's RUNNING trials whose heartbeat is older than the storage's grace period:
    Optuna's own test (``RDBStorage._get_stale_trial_ids``, on the database's clock), which its
    ``fail_stale_trials`` runs before failing those trials without a reason. Empty without a heartbeat."""
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is None:
        return []
    return storage._get_stale_trial_ids(study_id)


def grid_point(trial: FrozenTrial) -> dict:
    """The system attributes that pin a trial to its GridSampler point (empty if it has none)."""
    return {key: trial.system_attrs[key] for key in GRID_POINT_ATTRS if key in trial.system_attrs}
