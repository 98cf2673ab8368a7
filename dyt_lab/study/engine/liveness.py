"""Is a running trial's worker still alive? Process-tree ties, a heartbeat for journals, and the reaper.

A trial is RUNNING in the storage until its worker tells the result. If the worker is killed
(``kill -9``, a crashed node) nobody tells it, so the trial must be found and failed, and its
configuration retried. Optuna does this for database storages with its heartbeat
(``RDBStorage(heartbeat_interval=...)``, checked before each new trial); journal storages have no
heartbeat in Optuna, so ``TrialHeartbeat`` writes one as a trial system attribute. On top of
both, a worker on the same host is known dead at once by its process id, so a study resumed right
after a kill does not wait for the grace period.

A retry starts with no liveness record of its own (``clean_retry``): Optuna's retry callback
copies the dead trial's attributes, and a retry that carried the dead worker's ``host:pid`` or
its last heartbeat would look dead to another worker the moment it is popped (GitHub issue 13).
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from dyt_lab.study.attributes import FAIL_REASON, HEARTBEAT, TRIAL_PID, WORKER
from dyt_lab.study.definition.storage import trial_id
from dyt_lab.study.engine.faults import dead_worker_reason, no_heartbeat_reason
from dyt_lab.study.optuna_internals import stale_trial_ids

# What a run records about its own liveness and failure: never copied into its retry.
LIVENESS_USER_ATTRS = (WORKER, TRIAL_PID, FAIL_REASON)
LIVENESS_SYSTEM_ATTRS = (HEARTBEAT,)


def worker_tag() -> str:
    """This process as ``host:pid``, recorded on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:  # the state letter follows the parenthesised command name
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def local_worker_dead(trial: FrozenTrial) -> bool:
    """True if the trial's worker ran on this host and its process is gone."""
    host, _, pid = str(trial.user_attrs.get(WORKER, "")).rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def heartbeat_stale(trial: FrozenTrial, grace_period: float) -> bool:
    """True if a journal trial's last heartbeat (or its start) is older than ``grace_period``.

    A heartbeat older than the trial's start is not this run's (a retry queued by an older
    dyt-lab copied its predecessor's): the start counts then.
    """
    times = [float(t) for t in (trial.system_attrs.get(HEARTBEAT),
                                trial.datetime_start and trial.datetime_start.timestamp()) if t is not None]
    return bool(times) and time.time() - max(times) > grace_period


def clean_retry(retry):
    """``retry`` (Optuna's retry callback) queueing the trial without its liveness record.

    Optuna copies every attribute of the failed trial into the WAITING retry: its WORKER
    (a dead ``host:pid``), TRIAL_PID, FAIL_REASON and journal heartbeat too. Popped by a
    worker, the retry is RUNNING before that worker records itself; another worker's reaper that
    saw the inherited tag would fail it as dead. What the retry runs (parameters, seed, grid point)
    is kept.
    """
    def queue(study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.copy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in LIVENESS_USER_ATTRS}
        clean.system_attrs = {k: v for k, v in trial.system_attrs.items() if k not in LIVENESS_SYSTEM_ATTRS}
        retry(study, clean)

    return queue


class TrialHeartbeat:
    """Context manager: record a running trial's heartbeat every ``interval`` seconds.

    Journals: a trial system attribute (Optuna has no heartbeat for them). Databases opened with a
    heartbeat: Optuna's own ``record_heartbeat``, every ``heartbeat_interval`` of the storage, as
    ``study.optimize`` does it. Other storages: nothing. A beat that cannot be written (a full
    disk) is tried again at the next one, quietly; a trial ended by another worker stops the beat.
    """

    def __init__(self, storage, trial_id: int, interval: float, journal: bool) -> None:
        self.storage, self.trial_id, self.interval, self.journal = storage, trial_id, interval, journal
        database_interval = None if journal else getattr(storage, "get_heartbeat_interval", lambda: None)()
        if database_interval is not None:
            self.interval = database_interval
        self.enabled = journal or database_interval is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="dyt-lab-heartbeat")

    def beat(self) -> None:
        """Record one heartbeat now."""
        if self.journal:
            self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())
        else:
            self.storage.record_heartbeat(self.trial_id)

    def _beat(self) -> None:
        while True:
            try:
                self.beat()
            except optuna.exceptions.UpdateFinishedTrialError:  # ended (by another worker): nothing to keep alive
                return
            except Exception:  # a full disk, a database away for a moment: try again at the next beat; the
                pass  # worker's own next write meets a lasting fault and says so (a thread's traceback would not)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> TrialHeartbeat:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def fail_and_retry(study: optuna.Study, storage, trial: FrozenTrial, reason: str, retry) -> bool:
    """Fail a running trial with ``reason`` and queue its configuration again; False if another did it.

    Through ``storage`` (the study's): Optuna's public ``study.tell`` ends only trials this process asked for.
    """
    tid = trial_id(storage, study.study_name, trial.number)
    try:
        storage.set_trial_user_attr(tid, FAIL_REASON, reason)
        if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    retry(study, storage.get_trial(tid))
    return True


def reap_dead_trials(study: optuna.Study, storage, retry, journal: bool, grace_period: float) -> list[int]:
    """Fail (and retry) every RUNNING trial whose worker is dead; return their numbers.

    Dead means: its worker process on this host is gone, or no heartbeat for ``grace_period``
    seconds (Optuna's own test for databases, ours for journals). Each is failed here, with its
    reason, rather than by Optuna's ``fail_stale_trials``, which records none.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    stale = set() if journal else set(stale_trial_ids(storage, study_id))
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if local_worker_dead(trial):
            reason = dead_worker_reason(trial.user_attrs[WORKER])
        elif (journal and heartbeat_stale(trial, grace_period)) or (
                stale and storage.get_trial_id_from_study_id_trial_number(study_id, trial.number) in stale):
            reason = no_heartbeat_reason(grace_period)
        else:
            continue
        if fail_and_retry(study, storage, trial, reason, retry):
            reaped.append(trial.number)
    return reaped
