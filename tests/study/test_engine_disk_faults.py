"""A full disk and a read-only study folder (``engine/faults.py``, ``errors.check_writable``): one line naming
what could not be written, and no trial left RUNNING (GitHub issue 13). The tests with ``tmpfs`` use a real
tmpfs (root only; skipped with the reason otherwise); the others drive the worker loop with trial processes
that have already ended (``study_env``)."""

from __future__ import annotations

import errno
import os
import socket
import sqlite3

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dyt_lab import errors
from dyt_lab.errors import ConfigError, write_fault
from dyt_lab.study.definition.space import SearchSpace, saved_space
from dyt_lab.study.definition.storage import open_storage, trial_id
from dyt_lab.study.definition.study_file import SPEC_FILE, load_spec
from dyt_lab.study.engine import faults
from dyt_lab.study.engine import objective as objective_module
from dyt_lab.study.engine import worker as worker_module
from tests.helpers import last_line, run_cli
from tests.study.helpers import dead_pid, one_error_line, trials_of, write_journal_study


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


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_read_only_study_folder_is_one_line_naming_it_before_any_trial(tmp_path, tmpfs, capsys, storage):
    mount = tmpfs("ro", "2m")
    path = write_journal_study(tmp_path, "ro", root=mount / "studies", storage=storage)
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
    other = write_journal_study(tmp_path, "new", root=mount / "studies")  # a new study: its folder cannot be made
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
    path = write_journal_study(tmp_path, "full", root=mount, n_trials=2)
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
