"""Faults around a study's trials: two workers racing after a kill, a trial failed by someone else,
a full disk, a read-only study folder (GitHub issue 13).

Most tests drive the real worker loop (``worker.work``) on a real journal file, with the trial
process replaced by a stand-in that has already ended (``EndedTrial``), so each interleaving is
made to happen at one exact point instead of hoped for with sleeps. The tests with ``mount`` use
a real tmpfs (root only; skipped with the reason otherwise).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dyt_lab import errors
from dyt_lab.cli import main
from dyt_lab.errors import ConfigError, write_fault
from dyt_lab.study.attributes import HEARTBEAT
from dyt_lab.study.definition.space import SearchSpace, saved_space
from dyt_lab.study.definition.storage import make_retry, open_storage, retried_trial_number, trial_id
from dyt_lab.study.definition.study_file import SPEC_FILE, load_spec
from dyt_lab.study.engine import faults
from dyt_lab.study.engine import objective as objective_module
from dyt_lab.study.engine import prepare as prepare_module
from dyt_lab.study.engine import worker as worker_module
from dyt_lab.study.engine.ask_lock import AskLock
from dyt_lab.study.engine.liveness import fail_and_retry, reap_dead_trials, worker_tag
from dyt_lab.study.trial.protocol import RESULT_FILE, TRIAL_ENV, record_failure
from tests.helpers import ROOT, last_line, run_cli

BASE = str(ROOT / "configs" / "experiments" / "resnet_bn_vs_dyt_digits.yaml")
TINY = {"trainer.max_epochs": 2, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
        "trainer.enable_model_summary": False}


def write_study(folder: Path, name: str, root: Path | None = None, **keys) -> Path:
    """A journal study file over the tiny ResNet, one trial, started as a fresh process."""
    spec = {"study_name": name, "root": str(root or folder / "studies"), "storage": "journal",
            "base": {"configs": [BASE], "overrides": TINY}, "search_space": {"model.norm": ["dyt", "derf"]},
            "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "n_trials": 1,
            "isolation": "process", **keys}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class EndedTrial:
    """A trial process that ends as soon as it is waited for, after ``at_end`` ran (another worker acting
    mid-trial): it leaves the value 0.5 in its result file; or it fails with ``raises`` as a fit process
    ends (the real ``one_line_errors`` with ``record_failure``, in the trial's environment); or it exits
    with ``code`` having written nothing (``result``, if given, is what it wrote)."""

    def __init__(self, run_dir: Path, env: dict, code: int = 0, raises: BaseException | None = None,
                 result: dict | None = None, at_end=None) -> None:
        self.run_dir, self.env, self.code, self.raises, self.result = run_dir, env, code, raises, result
        self.at_end = at_end
        self.pid = os.getpid()

    def wait(self, timeout=None) -> int:
        if self.at_end is not None:
            self.at_end()
        (self.run_dir / "stderr.log").write_text("")
        if self.code == 0 and self.raises is None:
            self.result = {"history": {"0": 0.5}, "epochs": 1, "metrics": {}, "pruned": False, "error": None}
        if self.result is not None:
            (self.run_dir / RESULT_FILE).write_text(json.dumps(self.result))
        return self.code if self.raises is None else self._fail()

    def _fail(self) -> int:
        """The fit process's own ending with ``raises``; its exit code."""
        before = os.environ.get(TRIAL_ENV)
        os.environ[TRIAL_ENV] = self.env[TRIAL_ENV]
        try:
            with errors.one_line_errors(record_failure), errors.interrupted_quietly():
                raise self.raises
        except SystemExit as stop:
            return stop.code
        except BaseException:
            return 1  # Python's exit code for an exception nobody catches (a bug's traceback)
        finally:
            os.environ.pop(TRIAL_ENV)
            if before is not None:
                os.environ[TRIAL_ENV] = before

    def send_signal(self, signum) -> None:
        pass

    def kill(self) -> None:
        pass


@pytest.fixture
def study_env(tmp_path, monkeypatch):
    """A journal study (created, no trials), its spec, and trial processes replaced by EndedTrial.

    ``env.trials`` lists what each trial start does: an EndedTrial's keyword arguments, or an
    exception to raise; the last entry repeats.
    """
    spec = load_spec(["--config", str(write_study(tmp_path, "faults"))])
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


def other_worker(journal: str, name: str) -> optuna.Study:
    """The study as another worker process sees it: its own storage object on the same journal file."""
    return optuna.load_study(study_name=name, storage=open_storage(journal))


def dead_pid() -> int:
    """The process id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def trials_of(journal: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return other_worker(journal, name).trials


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


def test_a_storage_on_a_full_disk_is_one_line_and_the_trial_stays_running_until_a_resume(study_env, monkeypatch):
    """The journal cannot be written once the trial has run: one line naming the journal and saying
    the trial stays RUNNING (not ``AssertionError: Should not reach.``); a later resume (its worker
    gone, the disk freed) fails that trial and runs its configuration again."""
    spec, journal, name = study_env.spec, study_env.journal, study_env.spec.study_name
    backend = optuna.storages.journal.JournalFileBackend
    append = backend.append_logs

    def disk_fills_up():
        def full(self, logs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(backend, "append_logs", full)

    study_env.trials = [{"at_end": disk_fills_up}, {}]
    with pytest.raises(ConfigError) as raised:
        worker_module.work(spec, 0)
    assert str(raised.value) == (
        f"disk full: cannot write the study's storage '{journal}' (No space left on device); trial 0 stays "
        "RUNNING in it: once the storage can be written, resuming the study fails that trial and runs its "
        "configuration again")
    (trial,) = trials_of(journal, name)
    assert trial.state == TrialState.RUNNING

    monkeypatch.setattr(backend, "append_logs", append)  # space freed; the worker that wrote it has exited:
    storage = open_storage(journal)
    storage.set_trial_user_attr(trial_id(storage, name, trial.number), "worker", f"{socket.gethostname()}:{dead_pid()}")
    assert worker_module.work(spec, 0) == 0
    first, retry = trials_of(journal, name)
    assert first.state == TrialState.FAIL and "died" in first.user_attrs["fail_reason"]
    assert retry.state == TrialState.COMPLETE and retry.params == first.params


def test_a_full_trial_folder_fails_the_trial_in_one_line_and_stops_the_study(study_env):
    """The storage can be written, the trial's folder cannot: the trial is FAIL (not left RUNNING) with
    the file named, and the study stops, since every next trial writes to the same disk."""
    spec, journal, name = study_env.spec, study_env.journal, study_env.spec.study_name
    stdout = spec.folder / "trials" / "trial_0000" / "stdout.log"
    study_env.trials = [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(stdout))]
    with pytest.raises(ConfigError) as raised:
        worker_module.work(spec, 0)
    reason = f"disk full: cannot write '{stdout}' (No space left on device)"
    assert str(raised.value) == f"stopping the study, every trial would fail: {reason}"
    (trial,) = trials_of(journal, name)
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == reason


FULL_DISK = {  # what the trial's fit process met (and recorded), or nothing it could record
    "os_error": {"raises": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/last.ckpt")},
    "sqlite_full": {"raises": sqlite3.OperationalError("database or disk is full")},
    "nothing": {"code": 1},  # the disk was too full for the record itself; the disk has no space left now
}


@pytest.mark.parametrize("said", FULL_DISK)
def test_a_trial_whose_process_met_a_full_disk_records_it_and_stops_the_study(study_env, monkeypatch, said):
    spec, journal, name = study_env.spec, study_env.journal, study_env.spec.study_name
    study_env.trials = [FULL_DISK[said]]
    if said == "nothing":
        full = os.statvfs_result((4096, 4096, 100, 0, 0, 100, 0, 0, 0, 255))
        monkeypatch.setattr(objective_module.os, "statvfs", lambda path: full)
    with pytest.raises(ConfigError, match="^stopping the study, every trial would fail: "):
        worker_module.work(spec, 0)
    (trial,) = trials_of(journal, name)
    reason = trial.user_attrs["fail_reason"]
    run_dir = spec.folder / "trials" / objective_module.trial_dir_name(
        trial, SearchSpace(spec.search_space).configuration(trial.params))
    assert trial.state == TrialState.FAIL and str(run_dir) in reason
    assert ("No space left on device" in reason) if said != "nothing" else reason.startswith(
        f"disk full: no space left under '{run_dir}' (exit code 1: no output)")


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


DISK_LINE = "cannot write '/x/last.ckpt' ({}); free space or choose another folder, then run the command again"
ENDINGS = {  # what a fit process raises -> the kind and line it records, and its exit code
    "config": (ConfigError("model.norm 'dtt' is not a norm"), "config", "model.norm 'dtt' is not a norm", 2),
    "diverged": (errors.DivergenceError("diverged at step 3: loss=nan"), "diverged", "diverged at step 3: loss=nan", 3),
    "disk": (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/last.ckpt"), "disk",
             "disk full: " + DISK_LINE.format(os.strerror(errno.ENOSPC)), 2),
    "read_only": (OSError(errno.EROFS, os.strerror(errno.EROFS), "/x/last.ckpt"), "disk",
                  "read-only file system: " + DISK_LINE.format(os.strerror(errno.EROFS)), 2),
    "permission": (OSError(errno.EACCES, os.strerror(errno.EACCES), "/x/last.ckpt"), "config",
                   "permission denied: " + DISK_LINE.format(os.strerror(errno.EACCES)), 2),
    "bug": (RuntimeError("something else"), "crashed", "RuntimeError: something else", None),
    "ctrl_c": (KeyboardInterrupt(), "interrupted", "interrupted", 130),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_fit_process_records_its_error_line_and_kind_in_its_result_file(tmp_path, monkeypatch, capsys, ending):
    """The one place a fit turns an exception into its ``error:`` line and exit code also records both,
    keeping what the result file held; only with a trial binding, and only on rank 0."""
    raised, kind, line, code = ENDINGS[ending]
    result = tmp_path / RESULT_FILE
    result.write_text(json.dumps({"history": {"0": 0.5}, "epochs": 1, "error": None}))

    def end() -> int | None:
        try:
            with errors.one_line_errors(record_failure), errors.interrupted_quietly():
                raise raised
        except SystemExit as stop:
            return stop.code
        except BaseException as err:
            assert err is raised  # a bug keeps its traceback
            return None

    monkeypatch.delenv(TRIAL_ENV, raising=False)
    assert end() == code and json.loads(result.read_text())["error"] is None  # a plain fit: nothing recorded
    monkeypatch.setenv(TRIAL_ENV, json.dumps({"result": str(result)}))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert end() == code and json.loads(result.read_text())["error"] is None  # a DDP rank but the first
    monkeypatch.setenv("LOCAL_RANK", "0")
    capsys.readouterr()
    assert end() == code
    assert json.loads(result.read_text()) == {"history": {"0": 0.5}, "epochs": 1, "error": line, "kind": kind}
    if kind in ("config", "diverged", "disk"):  # the line recorded is the line the user sees
        assert last_line(capsys.readouterr().err) == f"error: {line}"


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


# --- read-only and full folders -------------------------------------------------------------------


def one_error_line(capsys, args: list[str]) -> str:
    """Run ``dyt-lab ARGS`` in-process; it must exit 2 with one ``error:`` line and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error:")] == \
        [last_line(err)], err
    return last_line(err)


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_read_only_study_folder_is_one_line_naming_it_before_any_trial(tmp_path, tmpfs, capsys, storage):
    mount = tmpfs("ro", "2m")
    path = write_study(tmp_path, "ro", root=mount / "studies", storage=storage)
    spec = load_spec(["--config", str(path)])
    spec.folder.mkdir(parents=True)  # a study that ran once: its storage and study.yaml
    (spec.folder / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    url = str(spec.folder / "journal.log") if storage == "journal" else f"sqlite:///{spec.folder / 'study.db'}"
    created = open_storage(url)
    optuna.create_study(study_name="ro", storage=created)
    if storage == "sqlite":
        created.engine.dispose()  # a file open for writing would keep the mount from turning read-only
    tmpfs.remount_ro(mount)

    line = one_error_line(capsys, ["study", "run", "--config", str(path)])
    assert line == (f"error: study folder '{spec.folder}' is not writable (Read-only file system); the study "
                    "writes its storage, study.yaml and trial runs there")
    assert one_error_line(capsys, ["study", "resume", "ro", "--root", str(mount / "studies")]) == line
    assert one_error_line(capsys, ["study", "report", "ro", "--root", str(mount / "studies")]) == (
        f"error: study folder '{spec.folder}' is not writable (Read-only file system); the report writes "
        "report.md, trials.csv and its plots there")
    other = write_study(tmp_path, "new", root=mount / "studies")  # a new study: its folder cannot be made
    assert one_error_line(capsys, ["study", "run", "--config", str(other)]) == (
        f"error: study folder '{mount / 'studies' / 'new'}' cannot be created: '{mount / 'studies'}' is not "
        "writable (Read-only file system); the study writes its storage, study.yaml and trial runs there")
    if storage == "sqlite":  # what a write to it says past the check: Optuna's misleading words, read right
        with pytest.raises(optuna.exceptions.StorageInternalError, match="exceeding max length") as raised:
            optuna.load_study(study_name="ro", storage=open_storage(url)).set_user_attr("x", 1)
        assert write_fault(raised.value).errno == errno.EROFS
        assert str(faults.storage_fault(raised.value, url)) == (
            f"read-only file system: cannot write the study's storage '{spec.folder / 'study.db'}' "
            "(Read-only file system)")


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_the_write_check_names_the_folder_whatever_refuses_the_write(tmp_path, monkeypatch, code):
    """Without a mount: the check's own write is refused (as on a read-only disk, for a user without
    the right, on a full disk), and the one line names the folder and why."""
    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(errors.tempfile, "mkstemp", refused)
    with pytest.raises(ConfigError) as raised:
        errors.check_writable(tmp_path, "study folder", "it holds the study")
    assert str(raised.value) == f"study folder '{tmp_path}' is not writable ({os.strerror(code)}); it holds the study"
    monkeypatch.undo()
    errors.check_writable(tmp_path / "not" / "yet", "study folder", "it holds the study")  # creatable: fine
    assert not (tmp_path / "not").exists() and not list(tmp_path.iterdir())  # the check leaves nothing


@pytest.mark.slow
def test_a_study_on_a_full_disk_ends_in_one_line_and_leaves_no_trial_running(tmp_path, tmpfs):
    """A real 600 KiB disk: the study's journal fits, the first trial's checkpoint does not."""
    mount = tmpfs("full", "600k")
    path = write_study(tmp_path, "full", root=mount, n_trials=2)
    result = run_cli(["study", "run", "--config", str(path)], cwd=tmp_path, timeout=200)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Should not reach" not in result.stderr
    (trial,) = trials_of(str(mount / "full" / "journal.log"), "full")  # stopped after the first trial
    run_dir = mount / "full" / "trials" / objective_module.trial_dir_name(
        trial, saved_space(mount / "full").configuration(trial.params))
    line = last_line(result.stderr)
    assert line.startswith("error: stopping the study, every trial would fail: disk full: ") and str(run_dir) in line
    assert "No space left on device" in line
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] in line


def test_a_changed_search_space_is_one_line_before_any_trial_and_the_study_keeps_its_trials(tmp_path, capsys):
    """Optuna refuses a categorical whose choices differ from those a study's trials recorded (and a key whose
    kind or log flag changed): a study file that adds a norm to a study that ran would fail every new trial.
    It is refused in one line instead; so are a range, a key added or dropped, and another objective, which
    Optuna would take, but which would mix two designs in one study (a retried point would not be its own)."""
    alpha = {"type": "float", "low": 0.1, "high": 1.0}
    path = write_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"], "model.alpha_init": alpha})
    spec = load_spec(["--config", str(path)])
    space = SearchSpace(spec.search_space)
    url = str(spec.folder / "journal.log")
    spec.folder.mkdir(parents=True)
    study = optuna.create_study(study_name="grown", storage=open_storage(url), direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"model.norm": "dyt", "model.alpha_init": 0.5}, value=0.9,
                                              distributions=dict(space.distributions)))
    design = {"seeds": None, "marker": "the design it ran with"}
    study.set_user_attr("design", design)
    study.set_user_attr("objective", {"metric": "val/acc", "value": "best"})
    before = (spec.folder / "journal.log").read_bytes()

    grown = write_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf", "dyt_shift"], "model.alpha_init": alpha})
    line = one_error_line(capsys, ["study", "run", "--config", str(grown)])
    assert line == ("error: study 'grown' exists with other choices for model.norm: this study file adds dyt_shift; "
                    "a study cannot change that: give the new design its own --study_name, or keep what it was "
                    "started with (dyt, derf)")
    shrunk = write_study(tmp_path, "grown", search_space={"model.norm": ["dyt"]})
    assert "this study file drops derf;" in one_error_line(capsys, ["study", "run", "--config", str(shrunk)])
    reordered = write_study(tmp_path, "grown", search_space={"model.norm": ["derf", "dyt"]})
    assert "this study file reorders them;" in one_error_line(capsys, ["study", "run", "--config", str(reordered)])
    logged = write_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"], "model.alpha_init": alpha | {"log": True}})
    line = one_error_line(capsys, ["study", "run", "--config", str(logged)])
    assert line.startswith("error: study 'grown' exists with another kind of model.alpha_init (") and \
        line.endswith("keep what it was started with (float 0.1 to 1.0)")
    widened = write_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"],
                                                           "model.alpha_init": alpha | {"high": 2.0}})
    assert one_error_line(capsys, ["study", "run", "--config", str(widened)]) == (
        "error: study 'grown' exists with another range for model.alpha_init: this study file has float 0.1 to 2.0; "
        "a study cannot change that: give the new design its own --study_name, or keep what it was started with "
        "(float 0.1 to 1.0)")
    added = write_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"], "model.alpha_init": alpha,
                                                         "model.optimizer.lr": [0.001, 0.003]})
    assert "exists with other search_space keys: this study file adds model.optimizer.lr;" in \
        one_error_line(capsys, ["study", "run", "--config", str(added)])
    dropped = write_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"]})
    assert "exists with search_space key model.alpha_init: this study file drops it;" in \
        one_error_line(capsys, ["study", "run", "--config", str(dropped)])
    same = write_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"], "model.alpha_init": alpha})
    assert one_error_line(capsys, ["study", "run", "--config", str(same), "--objective.metric", "val/loss"]) == (
        "error: study 'grown' was run with objective val/acc, maximize, best; this study file asks for val/loss, "
        "maximize, best: its finished trials were measured by the first; keep the objective it was run with, or "
        "give the new one its own --study_name")
    line = one_error_line(capsys, ["study", "run", "--config", str(same), "--objective.direction", "minimize",
                                   "--objective.value", "last"])
    assert "asks for val/acc, minimize, last: a study's direction cannot change;" in line
    after = optuna.load_study(study_name="grown", storage=open_storage(url))
    assert [t.state for t in after.trials] == [TrialState.COMPLETE] and after.user_attrs["design"] == design
    assert (spec.folder / "journal.log").read_bytes().startswith(before)  # only loads were appended
    assert not (spec.folder / SPEC_FILE).exists() and not (spec.folder / "trials").exists()


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


def run_ok(capsys, args: list[str]) -> str:
    """Run ``dyt-lab ARGS`` in-process; it must end without an error; its stdout."""
    main(args)
    captured = capsys.readouterr()
    assert "error:" not in captured.err, captured.err
    return captured.out


def run_failed(capsys, args: list[str]) -> tuple[str, str]:
    """Run ``dyt-lab ARGS`` in-process; it must exit 2 with one ``error:`` line; that line and its stdout."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and [line for line in err.splitlines() if line.startswith("error:")] == \
        [last_line(err)], err
    return last_line(err), out


FAILED = {"code": 1}  # a run that failed and said nothing: "exit code 1: no output"


def test_a_rerun_retries_each_failed_run_and_fails_in_one_line_until_every_run_has_completed(
        tmp_path, capsys, fake_runs):
    """A seeded grid whose runs failed (an objective metric misspelt: nothing was measured, so it may be
    fixed) runs again with the same command: every failed (configuration, seed) is queued again once, on
    its own grid point and seed, until each has a completed run; until then the command ends in one line."""
    path = write_study(tmp_path, "rerun", sampler={"name": "grid"}, seeds=[0, 1], n_trials=2,
                       objective={"metric": "val/accuracy"})
    run = ["study", "run", "--config", str(path)]
    fake_runs.trials = [FAILED]
    line, out = run_failed(capsys, run)
    assert "study rerun: 2/2 configurations x 2 seeds (4 fail)" in out
    assert line.startswith("error: study rerun: 4 runs have no completed trial: trial 0 (model.norm=") and \
        line.endswith("seed=0) failed: exit code 1: no output (and 3 more); fix the cause, then run the same "
                      "command again: it retries them")

    fake_runs.trials = [{}, FAILED, {}]  # the metric fixed; one of the four fails again
    line, out = run_failed(capsys, [*run, "--objective.metric", "val/acc"])
    assert "study rerun: 2/2 configurations x 2 seeds (3 complete, 1 fail), 4 failed runs retried" in out
    assert line.startswith("error: study rerun: 1 run has no completed trial: trial 5 (")
    fake_runs.started = 0
    fake_runs.trials = [{}]
    out = run_ok(capsys, [*run, "--objective.metric", "val/acc"])
    assert "study rerun: retrying 1 failed run with no completed trial (failed: trial 5)" in out
    assert "study rerun: 2/2 configurations x 2 seeds (4 complete), 1 failed run retried" in out
    assert fake_runs.started == 1
    out = run_ok(capsys, [*run, "--objective.metric", "val/acc"])  # done: nothing runs, nothing is retried
    assert "2/2 configurations x 2 seeds (4 complete)\n" in out and fake_runs.started == 1

    trials = trials_of(str(tmp_path / "studies" / "rerun" / "journal.log"), "rerun")
    assert len(trials) == 9  # 4 failed, 4 retries of which one failed, its retry
    done = [(t.params["model.norm"], t.user_attrs["seed"]) for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(done) == sorted((norm, seed) for norm in ("dyt", "derf") for seed in (0, 1))  # each once
    for retry in trials[4:]:
        parent = trials[retry.user_attrs["retry_of"]]
        assert parent.state == TrialState.FAIL and retry.params == parent.params
        assert retry.user_attrs["seed"] == parent.user_attrs["seed"]


def test_a_rerun_retries_only_as_many_configurations_as_n_trials_has_room_for_and_never_a_diverged_one(
        tmp_path, capsys, fake_runs):
    """n_trials counts configurations that completed (or diverged: a result, not a fault): a failed one is
    retried while there is room; a diverged run is neither retried nor an error."""
    path = write_study(tmp_path, "room", sampler={"name": "grid"}, n_trials=3,
                       search_space={"model.norm": ["dyt", "derf", "dyt_shift"]})
    run = ["study", "run", "--config", str(path)]
    diverged = {"code": 3, "result": {"history": {}, "epochs": 1, "error": "diverged at step 1: loss=nan",
                                      "kind": "diverged"}}
    fake_runs.trials = [FAILED, diverged, {}]
    line, out = run_failed(capsys, run)
    assert "study room: 3/3 trials (1 complete, 1 fail, 1 diverged)" in out
    assert line.startswith("error: study room: 1 run has no completed trial: trial 0 (model.norm=")
    line, _ = run_failed(capsys, [*run, "--n_trials", "2"])  # room for 2: the diverged and the complete one
    assert line.endswith("failed: exit code 1: no output; fix the cause, then run the same command again with "
                         "--n_trials above 2 to retry it (configurations that completed fill n_trials)")
    fake_runs.trials = [{}]
    out = run_ok(capsys, run)
    assert "study room: 3/3 trials (2 complete, 1 diverged), 1 failed run retried" in out
    trials = trials_of(str(tmp_path / "studies" / "room" / "journal.log"), "room")
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, None, None, 0]
    assert trials[3].params == trials[0].params and trials[3].state == TrialState.COMPLETE


def searched_study(tmp_path: Path) -> str:
    """A finished seeded search (3 norms x seeds 0, 1; dyt best, then derf), as `study run` leaves it; its root."""
    spec = load_spec(["--config", str(write_study(tmp_path, "search", seeds=[0, 1],
                                                  search_space={"model.norm": ["dyt", "derf", "dyt_shift"]}))])
    spec.folder.mkdir(parents=True)
    (spec.folder / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict()))
    study = optuna.create_study(study_name="search", storage=open_storage(str(spec.folder / "journal.log")),
                                direction="maximize")
    dists = SearchSpace(spec.search_space).distributions
    for norm, value in (("dyt", 0.9), ("derf", 0.8), ("dyt_shift", 0.7)):
        for seed in (0, 1):
            study.add_trial(optuna.trial.create_trial(params={"model.norm": norm}, distributions=dists, value=value,
                                                      user_attrs={"seed": seed}))
    return spec.root


def test_confirm_resumes_the_same_command_refuses_another_choice_and_extend_adds_it(tmp_path, capsys, fake_runs):
    root = searched_study(tmp_path)
    confirm = ["study", "confirm", "search", "--root", root]
    out = run_ok(capsys, [*confirm, "--top", "1", "--seeds", "10..11"])
    assert "study search.confirm: 1/1 configurations x 2 seeds (2 complete)" in out
    out = run_ok(capsys, [*confirm, "--top", "1", "--seeds", "10..11"])  # again: resumes, runs nothing
    assert "1/1 configurations x 2 seeds (2 complete)" in out and fake_runs.started == 2
    asked = "run it as it ran to resume it, or add --extend to add the new configurations and seeds to it"
    assert one_error_line(capsys, [*confirm, "--top", "2", "--seeds", "10..11"]) == (
        f"error: study 'search.confirm' ran with --top 1 --seeds 10..11; this command asks for --top 2 --seeds "
        f"10..11: {asked}")
    assert "asks for --top 1 --seeds 10..14 (the default):" in one_error_line(capsys, [*confirm, "--top", "1"])
    assert "asks for --top 1 --seeds 40..41:" in one_error_line(capsys, [*confirm, "--top", "1", "--seeds", "40..41"])
    assert "asks for --top 1 --per model.norm --seeds 10..11:" in one_error_line(
        capsys, [*confirm, "--top", "1", "--per", "model.norm", "--seeds", "10..11"])
    assert fake_runs.started == 2

    out = run_ok(capsys, [*confirm, "--top", "2", "--seeds", "10..12", "--extend"])
    assert "study search.confirm: extending it from --top 1 --seeds 10..11 with --top 2 --seeds 10..12: 1 more " \
           "configuration, 1 more seed" in out
    assert "study search.confirm: 2/2 configurations x 3 seeds (6 complete)" in out and fake_runs.started == 6
    confirmed = optuna.load_study(study_name="search.confirm",
                                  storage=open_storage(str(Path(root) / "search.confirm" / "journal.log")))
    assert sorted((t.params["model.norm"], t.user_attrs["seed"]) for t in confirmed.trials) == \
        sorted((norm, seed) for norm in ("dyt", "derf") for seed in (10, 11, 12))
    record = confirmed.user_attrs["confirms"]
    assert record["top"] == 2 and [c["params"] for c in record["configurations"]] == [{"model.norm": "dyt"},
                                                                                      {"model.norm": "derf"}]
    assert record["extended_from"] == [{"top": 1, "per": None, "ablate": False, "seeds": [10, 11]}]
    assert confirmed.user_attrs["design"]["seeds"] == [10, 11, 12]
    run_ok(capsys, [*confirm, "--top", "2", "--seeds", "10..12"])  # the extended command resumes it
    assert fake_runs.started == 6
    assert "ran with --top 2 --seeds 10..12; this command asks for --top 1 --seeds 10..11:" in one_error_line(
        capsys, [*confirm, "--top", "1", "--seeds", "10..11"])
