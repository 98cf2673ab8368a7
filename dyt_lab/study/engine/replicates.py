"""Replicated seeds and reruns: what each configuration x seed has run, and what a rerun must run again.

Every configuration runs once per seed of ``seeds``, the same seeds for all. Each seed run is an
Optuna trial of its own (user attribute ``seed``), so pruning, heartbeats, retries and resume work
per seed run exactly as for single runs: a killed seed run is retried on its own. When the sampler
proposes a new configuration, its first trial takes the first seed and the other seeds are queued at
once as WAITING trials with the same parameters (Optuna's ``add_trial``, as its retry callback does),
so they run next, on whichever worker asks first. A configuration's value is the mean over its seeds
(see ``statistics.py``); pairing by seed is what makes two configurations' difference as precise as
the study report says.

A rerun of a study (the same command again) retries every run that failed and has no completed
trial: ``study.enqueue_trial`` with the failed trial's parameters and seed, and its number in the
user attribute ``retry_of``. Optuna's ``enqueue_trial`` keeps a grid trial on its own point (the
GridSampler gives a queued trial no new one), but the queued trial has no parameters until it runs,
so until then it stands for the configuration of the trial it retries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from dyt_lab.errors import EXIT_DIVERGED
from dyt_lab.study.attributes import EXIT_CODE, RETRY_OF, SEED
from dyt_lab.study.definition.storage import retry_history
from dyt_lab.study.definition.study_file import StudySpec
from dyt_lab.study.optuna_internals import grid_point


def configuration_key(trial: FrozenTrial | optuna.Trial) -> str:
    """A configuration's identity: its parameters (or a queued trial's fixed ones) as sorted JSON."""
    return json.dumps(trial.params, sort_keys=True, default=str)


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """The failed trials queued again: by Optuna's retry callback (a dead worker) or by a rerun (``retry_of``)."""
    numbers = {n for t in trials for n in retry_history(t)}
    return numbers | {int(t.user_attrs[RETRY_OF]) for t in trials if t.user_attrs.get(RETRY_OF) is not None}


def standing(study: optuna.Study) -> list[tuple[FrozenTrial, FrozenTrial]]:
    """Each trial that stands for a seed run, with the trial whose parameters it runs: itself, or for a
    queued retry (no parameters yet) the failed trial it retries."""
    trials = study.get_trials(deepcopy=False)
    by_number, retried = {t.number: t for t in trials}, retried_numbers(trials)
    pairs = []
    for trial in trials:
        if trial.number in retried:
            continue
        ran = trial
        while not ran.params and ran.user_attrs.get(RETRY_OF) is not None \
                and int(ran.user_attrs[RETRY_OF]) in by_number:
            ran = by_number[int(ran.user_attrs[RETRY_OF])]
        pairs.append((trial, ran))
    return pairs


def live_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that stand for a seed run: all but failures whose configuration was queued again."""
    return [trial for trial, _ in standing(study)]


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count toward n_trials: all but queued ones and failures whose config was retried."""
    return [t for t in live_trials(study) if t.state != TrialState.WAITING]


def seeds_by_configuration(study: optuna.Study) -> dict[str, tuple[FrozenTrial, set[int]]]:
    """Configuration -> (one of its trials, the seeds that ran, run, or wait to run for it)."""
    found: dict[str, tuple[FrozenTrial, set[int]]] = {}
    for trial, ran in standing(study):
        if not ran.params:  # asked, not yet sampled: no configuration yet
            continue
        _, seeds = found.setdefault(configuration_key(ran), (ran, set()))
        if trial.user_attrs.get(SEED) is not None:
            seeds.add(int(trial.user_attrs[SEED]))
    return found


def first_free_seed(study: optuna.Study, trial: optuna.Trial, seeds: list[int]) -> int:
    """The seed a new trial takes: its queued seed, else the first its configuration lacks."""
    queued = trial.user_attrs.get(SEED)
    if queued is not None:
        return int(queued)
    key = configuration_key(trial)
    taken = {int(t.user_attrs[SEED]) for t, ran in standing(study)
             if t.number != trial.number and SEED in t.user_attrs and configuration_key(ran) == key}
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
                    user_attrs={SEED: seed}, system_attrs=kept))
                queued += 1
    return queued


def configurations_counted(trials: list[FrozenTrial]) -> int:
    """How many configurations the counted trials cover (n_trials counts these when seeds are set)."""
    return len({configuration_key(t) for t in trials if t.state != TrialState.WAITING})


def diverged(trial: FrozenTrial) -> bool:
    """A run whose loss became NaN or infinite: a result of its configuration, not a fault to retry."""
    return trial.state == TrialState.FAIL and trial.user_attrs.get(EXIT_CODE) == EXIT_DIVERGED


@dataclass
class Point:
    """A configuration (with seeds) or, without seeds, one trial: whether a run of it counts, and its failures."""

    first: int  # its first trial's number: points are retried in the order they started
    counts: bool = False  # a run of it completed, was pruned, diverged, runs or waits to run
    ended: set = field(default_factory=set)  # the seeds with such a run
    failed: list[FrozenTrial] = field(default_factory=list)


def failed_points(study: optuna.Study, seeded: bool) -> list[Point]:
    """The study's points, each with its failed runs that no other run of the same seed replaces."""
    points: dict[str, Point] = {}
    for trial, ran in standing(study):
        key = configuration_key(ran) if seeded and ran.params else f"#{trial.number}"
        point = points.setdefault(key, Point(first=trial.number))
        if trial.state == TrialState.FAIL and not diverged(trial):
            if ran.params:  # a trial failed before it had values is no configuration to run again
                point.failed.append(trial)
        else:
            point.counts = True
            point.ended.add(trial.user_attrs.get(SEED))
    for point in points.values():
        point.failed = [t for t in point.failed if t.user_attrs.get(SEED) not in point.ended]
    return list(points.values())


def plan_retries(study: optuna.Study, n_trials: int, seeded: bool) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
    """(failed runs a rerun retries, failed runs it leaves): every failed seed run of a configuration that
    counts, and configurations with no other run, oldest first, while n_trials has room for them."""
    points = failed_points(study, seeded)
    room = n_trials - sum(p.counts for p in points)
    retry, left = [], []
    for point in sorted((p for p in points if p.failed), key=lambda p: p.first):
        if point.counts or room > 0:
            retry += point.failed
            if not point.counts:  # a configuration the retry adds to those that count
                room -= 1
        else:
            left += point.failed
    return retry, left


def queue_retries(study: optuna.Study, failed: list[FrozenTrial]) -> None:
    """Queue each failed run again with its parameters and seed (a grid trial keeps its point)."""
    for trial in failed:
        attrs = {RETRY_OF: trial.number}
        if trial.user_attrs.get(SEED) is not None:
            attrs[SEED] = trial.user_attrs[SEED]
        study.enqueue_trial(trial.params, user_attrs=attrs)


def runs(n: int, what: str = "failed run") -> str:
    """``1 failed run``, ``2 failed runs``."""
    return f"{n} {what}{'s' if n != 1 else ''}"


def summary_line(study: optuna.Study, spec: StudySpec, retried: int) -> str:
    """``study NAME: 3/4 trials (2 complete, 1 diverged), 1 failed run retried``: the counted trials by state
    (a diverged run counts apart from other failures: it is a result, never retried)."""
    counted = counted_trials(study)
    states = ["diverged" if diverged(t) else t.state.name.lower() for t in counted]
    order = [s.name.lower() for s in TrialState if s != TrialState.WAITING] + ["diverged"]
    summary = ", ".join(f"{states.count(s)} {s}" for s in order if s in states)
    done = configurations_counted(counted) if spec.seeds else len(counted)
    unit = f"configurations x {len(spec.seeds)} seeds" if spec.seeds else "trials"
    line = f"study {spec.study_name}: {done}/{spec.n_trials} {unit} ({summary or 'none'})"
    return line + (f", {runs(retried)} retried" if retried else "")
