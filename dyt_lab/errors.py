"""Expected failures: a user mistake or a diverged run, their exit codes, and finding them in a chain."""

from __future__ import annotations

import errno
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

EXIT_CONFIG_ERROR = 2  # a value the user set cannot work (argparse uses 2 for usage errors too)
EXIT_DIVERGED = 3  # the run started but its loss became NaN or infinite
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)


class ConfigError(ValueError):
    """A value a user set (a norm, a placement rule, a preset, a path) that cannot work."""


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite; the message says at which step."""


def check_int(what: str, value: object, minimum: int = 1, error: type[Exception] = ConfigError) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``, else raise ``error`` in one line."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        must = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise error(f"{what} must be {must}, got {value!r}")
    return value


def cause_of_type(err: BaseException | None, types: tuple[type, ...]) -> BaseException | None:
    """The first exception of ``types`` in ``err``'s chain: jsonargparse wraps errors raised in __init__."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, types):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


# Faults of the place a run writes to, not bugs: each is one line naming the file.
DISK_FAULTS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied"}
# Faults no write on that disk escapes: the next run there meets them too (a permission may be one file's).
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# SQLite says it in words (through SQLAlchemy and Optuna's StorageInternalError), without an errno.
SQLITE_FAULTS = {"database or disk is full": errno.ENOSPC, "readonly database": errno.EROFS}


def write_fault(err: BaseException | None) -> OSError | None:
    """The full, read-only or forbidden write behind ``err`` (anywhere in its chain), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FAULTS:
            return err
        if type(err).__module__.split(".")[0] in ("sqlite3", "sqlalchemy"):
            for words, code in SQLITE_FAULTS.items():
                if words in str(err):
                    return OSError(code, os.strerror(code))
        err = err.__cause__ or err.__context__
    return None


def fault_line(fault: OSError, what: str) -> str:
    """``disk full: cannot write WHAT (No space left on device)``."""
    return f"{DISK_FAULTS[fault.errno]}: cannot write {what} ({fault.strerror or os.strerror(fault.errno)})"


def disk_fault(err: BaseException) -> ConfigError | None:
    """A full, read-only or forbidden disk behind ``err``, as one ConfigError line naming the file; else None."""
    fault = write_fault(err)
    if fault is None:
        return None
    what = f"'{fault.filename}'" if fault.filename else "a file"
    return ConfigError(f"{fault_line(fault, what)}; free space or choose another folder, then run the command again")


def check_writable(folder: Path, what: str, purpose: str) -> None:
    """One ConfigError line naming ``folder`` if it cannot be written; creates nothing.

    Checks the folder, or the nearest parent that exists (where it would be created), by writing a
    byte into a file there and removing it: ``os.access`` passes root on a full disk and on folders
    a network file system refuses it, and says nothing of why. ``purpose``: what would be written there.
    """
    existing = folder
    while not existing.is_dir() and existing != existing.parent:
        existing = existing.parent
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".dyt-lab-write-check-")
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        why = err.strerror or type(err).__name__
        where = f"is not writable ({why})" if existing == folder else \
            f"cannot be created: '{existing}' is not writable ({why})"
        raise ConfigError(f"{what} '{folder}' {where}; {purpose}") from None


def expected_failure(err: BaseException) -> tuple[BaseException, int] | None:
    """The user mistake, disk fault or divergence behind ``err`` and its exit code, or None for a bug."""
    cause = cause_of_type(err, (ConfigError, DivergenceError)) or disk_fault(err)
    if cause is None:
        return None
    return cause, EXIT_CONFIG_ERROR if isinstance(cause, ConfigError) else EXIT_DIVERGED


def failure_kind(err: BaseException) -> str:
    """What ended a run with ``err``: ``disk`` (full or read-only), ``config``, ``diverged``, or ``crashed`` (a bug)."""
    fault = write_fault(err)
    if fault is not None and fault.errno in FULL_DISK:
        return "disk"
    if isinstance(cause_of_type(err, (ConfigError, DivergenceError)), DivergenceError):
        return "diverged"
    return "crashed" if expected_failure(err) is None else "config"


@contextmanager
def one_line_errors(record: Callable[[str, str], None] | None = None) -> Iterator[None]:
    """Turn a user mistake or divergence into one ``error:`` line on stderr and its exit code.

    Anything else (a bug) propagates with its traceback, and so does everything when the
    environment sets ``DYT_LAB_DEBUG``. ``record(line, kind)`` is told how the run ended, if not
    well: the ``error:`` line's text, or a bug's last traceback line, or ``interrupted``, and its
    ``failure_kind`` (or ``interrupted``); a study's trial leaves that in its result file.
    """
    try:
        yield
    except Exception as err:
        failure = expected_failure(err)
        if record is not None:
            last = "".join(traceback.format_exception_only(type(err), err)).strip().splitlines()
            record(str(failure[0]) if failure else (last[-1] if last else type(err).__name__), failure_kind(err))
        if failure is None or os.environ.get("DYT_LAB_DEBUG"):
            raise
        print(f"error: {failure[0]}", file=sys.stderr)
        raise SystemExit(failure[1]) from None
    except (KeyboardInterrupt, SystemExit) as stop:  # Ctrl-C, and a run that said so and exits 130
        if record is not None and (isinstance(stop, KeyboardInterrupt) or stop.code == EXIT_INTERRUPTED):
            record("interrupted", "interrupted")
        raise


def stop_on_ctrl_c() -> None:
    """Make SIGINT raise KeyboardInterrupt in this process even if it was started with SIGINT ignored.

    A shell without job control (a script's ``cmd &``, ``make test &``) starts its background jobs with
    SIGINT ignored, and Python then leaves it ignored: Ctrl-C, ``kill -INT`` and a study stopping its
    trials would not stop a run, which would train on to its last epoch. SIGINT is how a run is asked
    to stop and say how to resume, so it must arrive. A handler someone installed is left alone.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def interrupted_quietly() -> Iterator[None]:
    """Ctrl-C outside a run (while parsing, importing, building): one line and exit 130, not a traceback."""
    stop_on_ctrl_c()
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
