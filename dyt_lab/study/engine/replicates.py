"""Replicated seeds: every configuration runs once per seed of ``seeds``, the same seeds for all.

Each seed run is an Optuna trial of its own (user attribute ``seed``), so pruning, heartbeats,
retries and resume work per seed run exactly as for single runs: a killed seed run is retried on
its own. When the sampler proposes a new configuration, its first trial takes the first seed and
the other seeds are queued at once as WAITING trials with the same parameters (Optuna's
``add_trial``, as its retry callback does), so they run next, on whichever worker asks first. A configuration's value is
the mean over its seeds (see ``statistics.py``); pairing by seed is what makes two configurations'
difference as precise as the study report says.
"""

from __future__ import annotations

import json

import optuna
from optuna.trial import FrozenTrial, TrialState

from dyt_lab.study.definition.storage import retry_history
from dyt_lab.study.optuna_internals import grid_point
from dyt_lab.study.trial.protocol import SEED_ATTR


def configuration_key(trial: FrozenTrial | optuna.Trial) -> str:
    """A configuration's identity: its parameters (or a queued trial's fixed ones) as sorted JSON."""
    return json.dumps(trial.params, sort_keys=True, default=str)


def live_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that stand for a seed run: all but failures whose configuration was queued again."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in retry_history(t)}
    return [t for t in trials if t.number not in retried]


def seeds_by_configuration(study: optuna.Study) -> dict[str, tuple[FrozenTrial, set[int]]]:
    """Configuration -> (one of its trials, the seeds that ran, run, or wait to run for it)."""
    found: dict[str, tuple[FrozenTrial, set[int]]] = {}
    for trial in live_trials(study):
        if not trial.params:  # asked, not yet sampled: no configuration yet
            continue
        _, seeds = found.setdefault(configuration_key(trial), (trial, set()))
        if trial.user_attrs.get(SEED_ATTR) is not None:
            seeds.add(int(trial.user_attrs[SEED_ATTR]))
    return found


def first_free_seed(study: optuna.Study, trial: optuna.Trial, seeds: list[int]) -> int:
    """The seed a new trial takes: its queued seed, else the first its configuration lacks."""
    queued = trial.user_attrs.get(SEED_ATTR)
    if queued is not None:
        return int(queued)
    key = configuration_key(trial)
    taken = {int(t.user_attrs[SEED_ATTR]) for t in live_trials(study)
             if t.number != trial.number and SEED_ATTR in t.user_attrs and configuration_key(t) == key}
    return next((s for s in seeds if s not in taken), seeds[0])


def queue_missing_seeds(study: optuna.Study, seeds: list[int]) -> int:
    """Queue a WAITING trial for every (configuration, seed) that no trial stands for; return how many.

    Queued as the retry callback queues a trial (``add_trial`` with the parameters and their
    distributions), keeping a grid trial's ``grid_id`` so the GridSampler knows the point.
    """
    queued = 0
    for trial, present in seeds_by_configuration(study).values():
        kept = grid_point(trial)
        for seed in seeds:
            if seed not in present:
                study.add_trial(optuna.trial.create_trial(
                    state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
                    user_attrs={SEED_ATTR: seed}, system_attrs=kept))
                queued += 1
    return queued


def configurations_counted(trials: list[FrozenTrial]) -> int:
    """How many configurations the counted trials cover (n_trials counts these when seeds are set)."""
    return len({configuration_key(t) for t in trials if t.state != TrialState.WAITING})
