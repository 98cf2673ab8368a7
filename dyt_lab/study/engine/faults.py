"""Every line the engine writes about a fault: why a trial failed, which runs a study still lacks, and a
storage or disk that refused a write.

A failed trial's reason is one line in its FAIL_REASON attribute, which the log, the report and the
study's last line (``unfinished_line``) show as written here. A storage or folder that cannot be written
ends the command in one ``ConfigError`` line naming the file (``dyt_lab.errors.write_fault`` finds the
fault behind an exception), never in a worker's traceback.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import TrialState

from dyt_lab.errors import ConfigError, fault_line, write_fault
from dyt_lab.study.attributes import FAIL_REASON, SEED
from dyt_lab.study.definition.storage import shown
from dyt_lab.study.definition.study_file import StudySpec
from dyt_lab.study.engine.replicates import plan_retries
from dyt_lab.study.trial.protocol import LINE_KINDS

# Why a trial failed, when its fit process could not say it (the trial's attribute FAIL_REASON).
INTERRUPTED = "interrupted; its configuration runs again on resume"


def outside_space_reason(err: Exception) -> str:
    """A queued retry whose values the edited search space no longer allows."""
    return f"its values do not fit the search space: {err}"


def timeout_reason(trial_timeout: float) -> str:
    """A fit killed for running past the study's ``trial_timeout``."""
    return f"exceeded trial_timeout ({trial_timeout:g} s)"


def not_finite_reason(metric: str) -> str:
    """A fit that ended well but never logged a finite objective."""
    return f"objective {metric} was never a finite number"


def dead_worker_reason(worker: str) -> str:
    """A running trial whose worker process on this host is gone."""
    return f"worker {worker} died (killed?) while the trial ran"


def no_heartbeat_reason(grace_period: float) -> str:
    """A running trial whose worker stopped beating, on another host or a database's clock."""
    return f"no heartbeat for {grace_period:g} s: its worker died (killed?)"


def killed_reason(code: int) -> str:
    """One line for a trial ended by signal ``-code``: it wrote nothing, its exit code says what happened."""
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")


def failure_reason(code: int, result: dict) -> str:
    """One line for a failed trial, from what its fit process recorded (``protocol.record_failure``):
    its ``error:`` line (a config error, a divergence, a full disk), else the exit code and what ended
    it (a bug's traceback's last line); a process killed by a signal recorded nothing."""
    if code < 0:
        return killed_reason(code)
    error = (result.get("error") or "")[:300]
    if error and result.get("kind") in LINE_KINDS:
        return error
    return f"exit code {code}: {error or 'no output'}"


def disk_full_reason(reason: str, result: dict, run_dir: Path) -> str | None:
    """A failed trial's reason if its disk was full or read-only, naming its folder; None otherwise.

    Its fit process said so (kind ``disk``), or the disk has no space left now: a full disk can
    also refuse the write of that record itself.
    """
    if result.get("kind") == "disk":
        return reason if str(run_dir) in reason else f"{reason} [trial folder '{run_dir}']"
    if result.get("error"):
        return None
    try:
        if os.statvfs(run_dir).f_bavail > 0:
            return None
    except OSError:
        return None
    return f"disk full: no space left under '{run_dir}' ({reason})"


def unwritable_reason(err: OSError, run_dir: Path) -> str | None:
    """The trial folder (or a file in it) cannot be written: one line naming it; None for another error."""
    fault = write_fault(err)
    return None if fault is None else fault_line(fault, f"'{fault.filename or run_dir}'")


def every_trial_fails(reason: str) -> ConfigError:
    """The line that stops a study whose every further trial would fail as the last one did."""
    return ConfigError(f"stopping the study, every trial would fail: {reason}")


def unfinished_line(study: optuna.Study, spec: StudySpec) -> str | None:
    """One line on the failed runs that still have no completed trial (diverged runs are results), or None."""
    retry, left = plan_retries(study, spec.n_trials, bool(spec.seeds))
    failed = sorted(retry + left, key=lambda t: t.number)
    if not failed:
        return None
    first = failed[0]
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in first.params.items())
    seed = first.user_attrs.get(SEED)
    values += f", seed={seed}" if seed is not None else ""
    reason = str(first.user_attrs.get(FAIL_REASON) or "no reason recorded")[:200]
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    have = f"{len(failed)} runs have" if len(failed) > 1 else "1 run has"
    line = (f"study {spec.study_name}: {have} no completed trial: trial {first.number} ({values}) failed: "
            f"{reason}{more}; ")
    them = "them" if len(failed) > 1 else "it"
    if not left:
        return line + f"fix the cause, then run the same command again: it retries {them}"
    beyond = f"{len(left)} of them" if retry else them
    return line + (f"fix the cause, then run the same command again with --n_trials above {spec.n_trials} to retry "
                   f"{beyond} (configurations that completed fill n_trials)")


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
