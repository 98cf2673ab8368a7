"""One worker's loop: under the ask lock, reap dead trials, count, ask for one more trial, run it, tell it.

Every worker runs this loop against the shared storage. The loop is written here, not left to
``study.optimize(n_trials=...)``, because ``optimize`` counts trials per call and per process, while a
study here tops up to ``n_trials`` in total over resumes and workers, never re-runs a grid point, and
checks for dead workers before every trial. One trial is ``run_trial``: ask, run, tell, as ``optimize``
does it, except that a trial another worker failed meanwhile, or a storage that cannot be written,
ends in one line instead of a worker's traceback.
"""

from __future__ import annotations

import math
import signal
import time

import optuna
from optuna.trial import TrialState

from dyt_lab.errors import EXIT_INTERRUPTED
from dyt_lab.study.attributes import FAIL_REASON
from dyt_lab.study.definition.samplers import make_pruner, make_sampler
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.definition.storage import is_journal, make_retry, open_storage, storage_url, trial_id
from dyt_lab.study.definition.study_file import StudySpec
from dyt_lab.study.engine.ask_lock import AskLock
from dyt_lab.study.engine.faults import every_trial_fails, storage_fault
from dyt_lab.study.engine.launch import warm_up
from dyt_lab.study.engine.liveness import TrialHeartbeat, clean_retry, reap_dead_trials
from dyt_lab.study.engine.objective import TrialObjective, base_args
from dyt_lab.study.engine.replicates import configurations_counted, counted_trials, queue_missing_seeds
from dyt_lab.study.optuna_internals import in_optimize_loop


def interrupt_on_sigterm() -> None:
    """From now on, SIGTERM (a scheduler, ``kill``) ends this process as cleanly as Ctrl-C does."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def work(spec: StudySpec, index: int, workers: int = 1) -> int:
    """One worker's loop: run trials until the study has n_trials, the grid is done, or time is up."""
    tag = f"[worker {index}] " if workers > 1 else ""
    log = lambda message: print(f"{tag}{message}", flush=True)  # noqa: E731
    interrupt_on_sigterm()
    if spec.isolation == "warm":
        warm_up(base_args(spec))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = SearchSpace(spec.search_space)
    url = storage_url(spec.storage, spec.folder)
    journal, retry = is_journal(url), clean_retry(make_retry(spec.max_retries))
    heartbeat = {} if journal else {"heartbeat_interval": spec.heartbeat_interval,
                                    "grace_period": spec.grace_period, "retry": retry}
    storage = open_storage(url, **heartbeat)
    existing = len(storage.get_all_trials(storage.get_study_id_from_name(spec.study_name), deepcopy=False))
    study = optuna.load_study(study_name=spec.study_name, storage=storage, pruner=make_pruner(spec.pruner),
                              sampler=make_sampler(spec.sampler, space, seed_offset=existing + 1000 * index))
    objective = TrialObjective(spec, space, url, storage, retry, log)
    lock = AskLock.of(spec.folder)
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    try:
        while deadline is None or time.monotonic() < deadline:
            lock.acquire()
            try:
                for number in reap_dead_trials(study, storage, retry, journal, spec.grace_period):
                    log(f"trial {number} FAILED: its worker died; its configuration is queued again")
                if spec.seeds and queue_missing_seeds(study, spec.seeds):  # e.g. a study resumed mid-seeds
                    log("queued the missing seed runs of configurations already started")
                if study_full(study, spec) or grid_done(study):
                    return 0
                objective.on_start = lock.release  # the new trial is RUNNING: others now count it
                run_trial(study, storage, objective, url, spec.heartbeat_interval, log)
            finally:
                lock.release()
            if objective.fatal:
                raise every_trial_fails(objective.fatal)
        log(f"timeout ({spec.timeout:g} s) reached: no new trials")
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_INTERRUPTED
    except Exception as err:  # reaping, queueing seeds or asking wrote to a storage that cannot be written
        fault = storage_fault(err, url)
        if fault is None:
            raise
        raise fault from err
    return 0


def study_full(study: optuna.Study, spec: StudySpec) -> bool:
    """n_trials reached (trials, or with seeds configurations) and nothing queued: a queued run (a retry, a
    configuration's other seeds) runs whatever the count, since it stands for a run the study lacks."""
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return False
    counted = counted_trials(study)
    return (configurations_counted(counted) if spec.seeds else len(counted)) >= spec.n_trials


def grid_done(study: optuna.Study) -> bool:
    """A grid with every point run (and none queued again) is done: Optuna would repeat a point."""
    if not isinstance(study.sampler, optuna.samplers.GridSampler):
        return False
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return not waiting and study.sampler.is_exhausted(study)


def run_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, objective: TrialObjective, url: str,
              heartbeat_interval: float, log) -> None:
    """Ask for one trial, run it, tell its state: ``study.optimize(n_trials=1)`` without two of its traps.

    Optuna's ``optimize`` ends a worker with ``ValueError: Cannot tell a FAIL trial.`` when another
    worker failed its trial meanwhile (a worker on another machine, whose reaper the ask lock does not
    hold back, can find a slow trial's heartbeat stale), and turns a storage that cannot be written
    into ``AssertionError: Should not reach.``. Here the first is one line and the worker goes on; the
    second is one line naming the storage (the worker stops: every next trial would fail the same way).
    As in ``optimize``: a heartbeat beats from ask to tell, an exception or Ctrl-C tells FAIL, and a
    sampler may call ``study.stop()`` (the GridSampler does once the grid is done; ``work`` stops then).
    """
    with in_optimize_loop(study):
        _run_trial(study, storage, objective, url, heartbeat_interval, log)


def _run_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, objective: TrialObjective, url: str,
               heartbeat_interval: float, log) -> None:
    trial = study.ask()
    tid = trial_id(storage, study.study_name, trial.number)
    try:
        with TrialHeartbeat(storage, tid, heartbeat_interval, is_journal(url)):
            try:
                value, state = objective(trial), None
            except optuna.TrialPruned:
                value, state = None, TrialState.PRUNED
            except BaseException:  # Ctrl-C, a bug, a storage that cannot be written
                try:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                except Exception:  # the storage cannot record it: the error being raised says why
                    pass
                raise
        if value is not None and math.isnan(value):
            state, value = TrialState.FAIL, None  # the objective's failure: its reason is in FAIL_REASON
        if not storage.get_trial(tid).state.is_finished():
            study.tell(trial, value, state=state, skip_if_finished=True)
            return
    except optuna.exceptions.UpdateFinishedTrialError:  # a write of the objective's, or the tell
        if not storage.get_trial(tid).state.is_finished():
            raise
    except Exception as err:
        fault = storage_fault(err, url, storage, tid, trial.number)
        if fault is None:
            raise
        raise fault from err
    # Here the trial was ended by someone else: its state and reason are theirs.
    ended = storage.get_trial(tid)
    reason = ended.user_attrs.get(FAIL_REASON) or "no reason recorded"
    log(f"trial {trial.number} was ended {ended.state.name} meanwhile by another worker ({reason}); "
        "its own result is not recorded")
