"""Run a study: check it, create or resume it in its storage, and run trials in one or more workers.

Every worker runs the same loop against the shared storage, under a lock file in the study folder:
fail the trials of dead workers (queueing their configurations again), count the trials that
count toward ``n_trials``, and ask Optuna for one more trial if the count is short. The loop is
written here because ``study.optimize(n_trials=...)`` counts trials per call and per process,
while a study here tops up to ``n_trials`` in total over resumes and workers, never re-runs a
grid point, and checks for dead workers before every trial. One trial is ``run_trial``: ask, run,
tell, as ``optimize`` does it, except that a trial another worker failed meanwhile, or a storage
that cannot be written, ends in one line instead of a worker's traceback.

A study folder that cannot be written (read-only, no permission, a full disk) is one error line
before any trial; a disk that fills up mid-study is one line naming the file (``dyt_lab.errors.write_fault``).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from dyt_lab.errors import EXIT_INTERRUPTED, ConfigError, check_writable, fault_line, write_fault
from dyt_lab.study.definition.design import check_design
from dyt_lab.study.definition.samplers import check_sampler, make_pruner, make_sampler
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.definition.storage import (
    is_journal,
    make_retry,
    open_storage,
    shown,
    storage_url,
    trial_id,
)
from dyt_lab.study.definition.study_file import SPEC_FILE, TRIALS, StudySpec
from dyt_lab.study.engine.launch import warm_up
from dyt_lab.study.engine.liveness import TrialHeartbeat, clean_retry, reap_dead_trials
from dyt_lab.study.engine.objective import TrialObjective
from dyt_lab.study.engine.precheck import (
    SPACE_ATTR,
    check_trials,
    check_unchanged,
    space_record,
    visible_gpus,
    worker_gpus,
)
from dyt_lab.study.engine.replicates import (
    configurations_counted,
    counted_trials,
    plan_retries,
    queue_missing_seeds,
    queue_retries,
    runs,
    summary_line,
    unfinished_line,
)
from dyt_lab.study.optuna_internals import in_optimize_loop
from dyt_lab.study.trial.protocol import SEED_ATTR, die_with_parent


class AskLock:
    """An exclusive lock file, so two local workers never both see "one trial short" and both ask."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    def acquire(self) -> None:
        import fcntl

        self._file = open(self.path, "a")  # held across calls; closed in release()
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        """Release the lock; calling it again does nothing."""
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def study_full(study: optuna.Study, spec: StudySpec) -> bool:
    """n_trials reached (trials, or with seeds configurations) and nothing queued: a queued run (a retry, a
    configuration's other seeds) runs whatever the count, since it stands for a run the study lacks."""
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return False
    counted = counted_trials(study)
    return (configurations_counted(counted) if spec.seeds else len(counted)) >= spec.n_trials


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`) ends a worker as cleanly as Ctrl-C


def check_folders(spec: StudySpec) -> None:
    """The study folder and its trials folder can be written (checked before anything is written)."""
    purpose = "the study writes its storage, study.yaml and trial runs there"
    check_writable(spec.folder, "study folder", purpose)
    if (spec.folder / TRIALS).is_dir():  # a folder of its own (a link elsewhere, other rights)
        check_writable(spec.folder / TRIALS, "trials folder", "each trial writes its run folder there")


def storage_shown(url: str) -> str:
    """The storage in a disk-fault message: its file (journal, SQLite), else its URL without the password."""
    if url.startswith("sqlite:///"):
        return f"the study's storage '{url.removeprefix('sqlite:///')}'"
    return f"the study's storage '{shown(url)}'"


@contextmanager
def disk_faults(what: str) -> Iterator[None]:
    """Turn a write that a full or read-only disk refused into one ConfigError line naming ``what``."""
    try:
        yield
    except Exception as err:
        fault = write_fault(err)
        if fault is None or isinstance(err, ConfigError):
            raise
        raise ConfigError(fault_line(fault, what)) from err


def storage_fault(err: BaseException, url: str, storage: optuna.storages.BaseStorage | None = None,
                  tid: int | None = None, number: int | None = None) -> ConfigError | None:
    """One line for a storage (or its lock file) that cannot be written, and what became of trial ``number``
    (storage id ``tid``)."""
    fault = write_fault(err)
    if fault is None or isinstance(err, ConfigError):
        return None
    other_file = fault.filename and str(fault.filename) not in (url, url.removeprefix("sqlite:///"))
    line = fault_line(fault, f"'{fault.filename}'" if other_file else storage_shown(url))
    if storage is not None and tid is not None:
        try:
            state = storage.get_trial(tid).state
        except Exception:  # reading failed too: say nothing about the trial
            state = None
        if state == TrialState.RUNNING:
            line += (f"; trial {number} stays RUNNING in it: once the storage can be written, resuming "
                     "the study fails that trial and runs its configuration again")
    return ConfigError(line)


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
            state, value = TrialState.FAIL, None  # the objective's failure: its reason is in fail_reason
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
    reason = ended.user_attrs.get("fail_reason") or "no reason recorded"
    log(f"trial {trial.number} was ended {ended.state.name} meanwhile by another worker ({reason}); "
        "its own result is not recorded")


def prepare(spec: StudySpec, only: list[dict] | None = None) -> tuple[SearchSpace, list[str]]:
    """Check everything before any trial: folders, space, sampler, pruner, configs, storage; create the study.

    ``only``: the configurations (Optuna params) a study runs and nothing else, each checked whole.
    """
    check_folders(spec)
    space = SearchSpace(spec.search_space)
    check_sampler(spec.sampler, space)
    make_pruner(spec.pruner)
    check_unchanged(spec, space)  # an existing study's objective and space: before seconds of building runs
    gpus = visible_gpus()
    print(f"study {spec.study_name}: checking {runs(len(space.distributions), 'searched key')} against dyt-lab fit ...",
          file=sys.stderr)
    exact = None if only is None else [space.configuration(params).values for params in only]
    if check_trials(spec, space, len(gpus), exact) and spec.isolation == "warm":
        print("note: trials run DDP (several devices or nodes), which starts its own processes: "
              "each trial starts as a fresh process (isolation: process)", file=sys.stderr)
        spec.isolation = "process"
    check_design(space, spec)
    url = storage_url(spec.storage, spec.folder)
    with disk_faults(storage_shown(url)):  # the disk filled up since the check, or a database refuses writes
        _create(spec, url, space)
    with disk_faults(f"'{spec.folder / SPEC_FILE}'"):
        spec.folder.mkdir(parents=True, exist_ok=True)
        (spec.folder / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    if spec.workers > 1 and url.startswith("sqlite"):
        print(f"note: {spec.workers} workers on SQLite work, but storage: journal suits several processes "
              "better", file=sys.stderr)
    return space, gpus


def _create(spec: StudySpec, url: str, space: SearchSpace) -> optuna.Study:
    """Create (or load) the study in its storage, with the study's direction, design and metric name."""
    if spec.storage in ("sqlite", "journal"):
        spec.folder.mkdir(parents=True, exist_ok=True)
    with_heartbeat = {} if is_journal(url) else {"heartbeat_interval": spec.heartbeat_interval,
                                                  "grace_period": spec.grace_period}
    study = optuna.create_study(study_name=spec.study_name, storage=open_storage(url, **with_heartbeat),
                                direction=spec.objective.direction, load_if_exists=True)
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what optuna-dashboard names the value by
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.objective.metric])
    if SPACE_ATTR not in study.user_attrs or not any(t.params for t in study.get_trials(deepcopy=False)):
        # what check_unchanged compares a later study file with, once a trial drew values from it
        study.set_user_attr(SPACE_ATTR, space_record(space))
    study.set_user_attr("objective", {"metric": spec.objective.metric, "value": spec.objective.value})
    study.set_user_attr("design", {"seeds": spec.seeds, "reference": spec.reference, "gap_from": spec.gap_from,
                                   "margin": spec.margin})
    return study


def enqueue(spec: StudySpec, queue: list[dict], attrs: dict) -> None:
    """Queue fixed configurations (first seed; the others follow) unless queued before, and set study attributes."""
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(storage_url(spec.storage, spec.folder)))
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    first_seed = {SEED_ATTR: spec.seeds[0]} if spec.seeds else None
    for params in queue:
        study.enqueue_trial(params, user_attrs=first_seed, skip_if_exists=True)


def run_study(spec: StudySpec, queue: list[dict] | None = None, attrs: dict | None = None,
              only_queued: bool = False) -> None:
    """``dyt-lab study run``: prepare, retry failed runs, run the workers, print where the report is.

    ``queue`` holds configurations (Optuna params) to run first, ``attrs`` study attributes to record
    (``dyt-lab study confirm`` uses both); ``only_queued``: the queue is all the study runs, so each queued
    configuration is checked whole (a holdout's arms). Ends in one ``error:`` line if a run has no completed trial.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from TrialObjective
    if spec.workers == 1 and spec.isolation == "warm":
        warm_up()  # its imports run beside the checks below, on the other core
    space, gpus = prepare(spec, queue if only_queued else None)
    url = storage_url(spec.storage, spec.folder)
    with disk_faults(storage_shown(url)):
        if queue or attrs:
            enqueue(spec, queue or [], attrs or {})
        retried = retry_failed(spec, url)
    if spec.workers == 1:
        code = work(spec, 0)
    else:
        code = spawn_workers(spec, gpus)
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(url))
    print(summary_line(study, spec, retried))
    if code == EXIT_INTERRUPTED:
        print(f"interrupted: run the same command (or `dyt-lab study resume {spec.study_name}`) to continue")
        raise SystemExit(code)
    print(f"report: dyt-lab study report {spec.study_name}" + (f" --root {spec.root}" if spec.root != "studies" else ""))
    if code:
        raise SystemExit(code)
    if line := unfinished_line(study, spec):
        raise ConfigError(line)


def retry_failed(spec: StudySpec, url: str) -> int:
    """Queue again each failed run that has no completed trial, as far as n_trials has room; return how many.

    Under the ask lock, so that two commands started together on this machine do not both queue them.
    """
    lock = AskLock(spec.folder / ".ask.lock")
    lock.acquire()
    try:
        study = optuna.load_study(study_name=spec.study_name, storage=open_storage(url))
        retry, _ = plan_retries(study, spec.n_trials, bool(spec.seeds))
        queue_retries(study, retry)
    finally:
        lock.release()
    if retry:
        numbers = ", ".join(str(t.number) for t in retry)
        print(f"study {spec.study_name}: retrying {runs(len(retry))} with no completed trial (failed: trial "
              f"{numbers})", flush=True)
    return len(retry)


def spawn_workers(spec: StudySpec, gpus: list[str]) -> int:
    """Start ``spec.workers`` worker processes on the shared storage; each gets its own GPUs if any."""
    spec_path = spec.folder / SPEC_FILE
    procs = []
    for index in range(spec.workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(worker_gpus(gpus, spec.workers, index))
        elif "OMP_NUM_THREADS" not in env:  # CPU trials side by side: share the cores, do not fight
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.workers))
        command = [sys.executable, "-m", "dyt_lab", "study", "_worker", str(spec_path), str(index),
                   str(spec.workers), str(os.getpid())]
        procs.append(subprocess.Popen(command, env=env))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        codes = [proc.wait() for proc in procs]
    except KeyboardInterrupt:  # Ctrl-C reached the workers too; a SIGTERM did not: pass it on
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait() for proc in procs]
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return max(codes)


def work(spec: StudySpec, index: int, workers: int = 1) -> int:
    """One worker's loop: run trials until the study has n_trials, the grid is done, or time is up."""
    tag = f"[worker {index}] " if workers > 1 else ""
    log = lambda message: print(f"{tag}{message}", flush=True)  # noqa: E731
    signal.signal(signal.SIGTERM, _interrupt)
    if spec.isolation == "warm":
        warm_up()
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
    lock = AskLock(spec.folder / ".ask.lock")
    deadline = None if spec.timeout is None else time.monotonic() + spec.timeout
    try:
        while deadline is None or time.monotonic() < deadline:
            lock.acquire()
            try:
                for number in reap_dead_trials(study, storage, retry, journal, spec.grace_period):
                    log(f"trial {number} FAILED: its worker died; its configuration is queued again")
                if spec.seeds and queue_missing_seeds(study, spec.seeds):  # e.g. a study resumed mid-seeds
                    log("queued the missing seed runs of configurations already started")
                if study_full(study, spec) or _grid_done(study):
                    return 0
                objective.on_start = lock.release  # the new trial is RUNNING: others now count it
                run_trial(study, storage, objective, url, spec.heartbeat_interval, log)
            finally:
                lock.release()
            if objective.fatal:
                raise ConfigError(f"stopping the study, every trial would fail: {objective.fatal}")
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


def _grid_done(study: optuna.Study) -> bool:
    """A grid with every point run (and none queued again) is done: Optuna would repeat a point."""
    if not isinstance(study.sampler, optuna.samplers.GridSampler):
        return False
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return not waiting and study.sampler.is_exhausted(study)


def run_worker(spec_path: str, index: int, workers: int, launcher: int) -> None:
    """``dyt-lab study _worker``: one of the processes ``--workers N`` starts (checked by the launcher)."""
    from dyt_lab.study.definition.study_file import load_spec

    die_with_parent(launcher)  # a killed launcher takes its workers (and their trials) with it
    code = work(load_spec(["--config", spec_path]), index, workers)
    if code:
        raise SystemExit(code)
