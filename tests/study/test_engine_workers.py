"""Faults around a study's trials in the worker loop (``engine/worker.py``, ``engine/liveness.py``): two
workers racing after a kill, a trial failed by someone else, the reason a failed trial records, the heartbeat
(GitHub issue 13).

The tests drive the real worker loop (``worker.work``) on a real journal file, with the trial process
replaced by a stand-in that has already ended (``EndedTrial`` in tests/study/helpers.py, through the
``study_env`` fixture), so each interleaving is made to happen at one exact point instead of hoped for with
sleeps.
"""

from __future__ import annotations

import socket
import time
import warnings
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.trial import TrialState

from dyt_lab.errors import ConfigError
from dyt_lab.study.attributes import HEARTBEAT
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.definition.storage import make_retry, open_storage, retried_trial_number, trial_id
from dyt_lab.study.engine import worker as worker_module
from dyt_lab.study.engine.ask_lock import AskLock
from dyt_lab.study.engine.liveness import fail_and_retry, reap_dead_trials, worker_tag
from tests.study.helpers import dead_pid, trials_of


@pytest.mark.parametrize("death", ["dead_local_pid", "silent_remote_worker"])
def test_a_retry_is_not_failed_by_another_workers_reaper_while_it_starts(study_env, monkeypatch, capsys, death):
    """kill -9 of a --workers 2 journal study, then a rerun (GitHub issue 13, bug 2).

    A RUNNING trial of a dead worker: on this host by its process id, or elsewhere by an old
    heartbeat. Worker A's reaper fails it and queues its configuration again; A pops that retry,
    and at the moment A releases the ask lock, worker B (blocked on it) takes the lock and runs its
    reaper. B must find nothing to reap, and A must record its result: two trials, not three.
    """
    spec, journal, name = study_env.spec, study_env.journal, study_env.spec.study_name
    if death == "dead_local_pid":  # only its process id says it is dead: its last heartbeat is recent
        worker, beat = f"{socket.gethostname()}:{dead_pid()}", time.time() - 1
    else:  # a worker on another host (no process id to check), silent for an hour
        worker, beat = "another-host:4242", time.time() - 3600
    space = SearchSpace(spec.search_space)
    storage = open_storage(journal)  # another process's: the dead worker's trial, started an hour ago
    storage.create_new_trial(storage.get_study_id_from_name(name), template_trial=optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=TrialState.RUNNING, value=None, intermediate_values={},
        datetime_start=datetime.now() - timedelta(hours=1), datetime_complete=None,
        params={"model.norm": "derf"}, distributions={"model.norm": space.distributions["model.norm"]},
        user_attrs={"worker": worker, "trial_pid": 4243}, system_attrs={HEARTBEAT: beat}))

    seen_by_b: list[dict] = []
    release = AskLock.release

    def release_then_worker_b_reaps(lock):
        held = lock._file is not None
        release(lock)
        if held and not seen_by_b:  # the first release: A has just asked for (popped) the retry
            b_lock = AskLock(lock.path)
            b_lock.acquire()  # as worker B, blocked on the lock until now, would
            try:
                study_b_storage = open_storage(journal)
                study_b = optuna.load_study(study_name=name, storage=study_b_storage)
                running = study_b.get_trials(states=(TrialState.RUNNING,))
                reaped = reap_dead_trials(study_b, study_b_storage, make_retry(spec.max_retries), True,
                                          spec.grace_period)
            finally:
                release(b_lock)
            seen_by_b.append({"running": running, "reaped": reaped})

    monkeypatch.setattr(AskLock, "release", release_then_worker_b_reaps)
    assert worker_module.work(spec, 0) == 0
    out = capsys.readouterr().out

    assert "trial 0 FAILED: its worker died; its configuration is queued again" in out  # A reaped the dead one
    assert len(seen_by_b) == 1 and seen_by_b[0]["reaped"] == []  # B failed nothing
    first, retry = trials_of(journal, name)  # no third run of the configuration
    assert first.state == TrialState.FAIL and retry.state == TrialState.COMPLETE and retry.value == 0.5
    assert retry.params == first.params and retry.user_attrs["worker"] == worker_tag()
    assert "trial 1 COMPLETE" in out
    (running,) = seen_by_b[0]["running"]  # what B saw when it got the lock: A's retry, already A's own
    assert running.number == 1 and retried_trial_number(running) == 0
    assert running.user_attrs["worker"] == worker_tag() and running.user_attrs.get("fail_reason") is None
    # ... and nothing else of the dead run's liveness: its trial process, its heartbeat
    assert running.user_attrs.get("trial_pid") != 4243
    assert running.system_attrs.get(HEARTBEAT, time.time()) > beat


@pytest.mark.parametrize("when", ["while_it_runs", "before_its_tell"])
def test_a_trial_failed_by_another_worker_meanwhile_is_one_line_and_the_worker_goes_on(
        study_env, monkeypatch, capsys, when):
    """A reaper the ask lock does not cover (another machine, a heartbeat grace period run out) fails
    A's trial mid-run, or after A wrote its attributes but before it tells the result. A must not die
    with ``Cannot tell a FAIL trial`` (exit 1): one line, and it goes on with the next trial."""
    spec, journal, name = study_env.spec, study_env.journal, study_env.spec.study_name
    reason = f"no heartbeat for {spec.grace_period} s: its worker died (killed?)"

    def remote_reaper_fails_trial_0():
        storage_b = open_storage(journal)
        study_b = optuna.load_study(study_name=name, storage=storage_b)
        (trial,) = [t for t in study_b.trials if t.number == 0]
        assert fail_and_retry(study_b, storage_b, trial, reason, make_retry(spec.max_retries))

    if when == "while_it_runs":
        study_env.trials = [{"at_end": remote_reaper_fails_trial_0}, {}]
    else:  # the objective's last word before the tell is its log line: fail the trial right then
        def print_then_fail(message, **kwargs):
            print(message, **kwargs)
            if message.startswith("trial 0 COMPLETE"):
                remote_reaper_fails_trial_0()

        monkeypatch.setattr(worker_module, "print", print_then_fail, raising=False)
    code = worker_module.work(spec, 0)
    out = capsys.readouterr().out

    assert code == 0
    lines = [line for line in out.splitlines() if "meanwhile" in line]
    assert lines == [f"trial 0 was ended FAIL meanwhile by another worker ({reason}); its own result is not recorded"]
    first, retry = trials_of(journal, name)
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"] == reason
    assert retry.state == TrialState.COMPLETE and retry.params == first.params  # the worker went on


def test_a_trial_that_failed_otherwise_is_not_called_a_disk_fault(study_env):
    study_env.trials = [{"raises": RuntimeError("something else")}]
    assert worker_module.work(study_env.spec, 0) == 0
    (trial,) = trials_of(study_env.journal, study_env.spec.study_name)
    assert trial.user_attrs["fail_reason"] == "exit code 1: RuntimeError: something else"


def test_a_trial_reason_comes_from_its_result_file_not_its_stderr(study_env):
    """A config error's line is recorded as printed; what stderr says besides (a warning) is not the reason."""
    spec, journal, name = study_env.spec, study_env.journal, study_env.spec.study_name
    study_env.trials = [{"raises": ConfigError("model.norm 'dtt' is not a norm")}, {"code": 1}]
    spec.n_trials = 2
    assert worker_module.work(spec, 0) == 0
    first, second = trials_of(journal, name)
    assert first.user_attrs["fail_reason"] == "model.norm 'dtt' is not a norm" and first.user_attrs["exit_code"] == 2
    assert second.user_attrs["fail_reason"] == "exit code 1: no output"  # nothing recorded, disk not full


def test_an_objective_no_trial_logs_stops_the_study_with_the_callbacks_line(study_env):
    message = "objective metric 'val/acc' is not logged by this run; logged metrics: val/loss"
    study_env.trials = [{"code": 2, "result": {"history": {}, "epochs": 1, "error": message, "kind": "config",
                                               "every_trial": True}}]
    with pytest.raises(ConfigError) as raised:
        worker_module.work(study_env.spec, 0)
    assert str(raised.value) == f"stopping the study, every trial would fail: {message}"


def test_run_trial_beats_a_databases_heartbeat_as_optimize_does_without_its_warning(tmp_path, monkeypatch):
    """run_trial replaces study.optimize(n_trials=1): for a database with a heartbeat it records Optuna's
    heartbeat while the trial runs, and Optuna's warning for an ask outside optimize is not shown."""
    from dyt_lab.study.engine.liveness import TrialHeartbeat

    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url, heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=storage)
    beats = []
    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", lambda self, tid: beats.append(tid))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        worker_module.run_trial(study, storage, lambda trial: trial.suggest_float("x", 0, 1) * 0 + 0.25, url, 10, print)
    assert [str(w.message) for w in shown] == []
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.25 and beats == [trial_id(storage, study.study_name, 0)]
    plain_storage = open_storage(f"sqlite:///{tmp_path / 'plain.db'}")
    plain = optuna.create_study(storage=plain_storage)
    tid = trial_id(plain_storage, plain.study_name, plain.ask().number)
    assert not TrialHeartbeat(plain_storage, tid, 10, journal=False).enabled
