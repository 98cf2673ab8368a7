"""Where a study lives: SQLite in its folder, a journal file, or a database URL; open it or say why not."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from dyt_lab.errors import ConfigError

SQLITE_FILE = "study.db"
JOURNAL_FILE = "journal.log"
_CREATE_LOCK = 0x6479745F6C6162  # "dyt_lab": the advisory lock key of opening a PostgreSQL storage


def storage_url(storage: str, folder: Path) -> str:
    """The study's storage as a URL (databases) or a file path (journals)."""
    if storage == "sqlite":
        return f"sqlite:///{folder / SQLITE_FILE}"
    if storage == "journal":
        return str(folder / JOURNAL_FILE)
    return storage


def is_journal(url: str) -> bool:
    """Journal storages are named by a file path; databases by a URL with a scheme."""
    return "://" not in url


def shown(url: str) -> str:
    """The storage as messages show it: a database URL with its password as ``***``."""
    if is_journal(url):
        return url
    from sqlalchemy.engine import make_url  # optuna's own dependency

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL sqlalchemy cannot parse must not print its password either
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def make_retry(max_retries: int) -> RetryHeartbeatStaleTrialCallback:
    """Optuna's callback that queues a dead trial's configuration again, as a WAITING trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retries)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the failed trials this one retries, oldest first; empty if it is no retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def retried_trial_number(trial: FrozenTrial) -> int | None:
    """The number of the first failed trial this one retries, or None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def trial_id(storage: optuna.storages.BaseStorage, study_name: str, number: int) -> int:
    """A trial's storage id, what the storage's methods take (Optuna's Trial keeps its own private)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 retry=None) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage, or raise a one-line ConfigError saying why it cannot be.

    With ``heartbeat_interval``, a database storage records each running trial's heartbeat and
    fails trials silent for ``grace_period`` seconds, queueing them again through ``retry``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if is_journal(url):
                return JournalStorage(JournalFileBackend(url))
            # Several processes share a study file: wait for SQLite's lock instead of failing at 5 s.
            engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
            with _one_at_a_time(url):
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                                  grace_period=grace_period, heartbeat_stale_trial_callback=retry)
    except Exception as err:  # sqlalchemy, driver and OS errors: any of them means "cannot open"
        raise ConfigError(f"storage '{shown(url)}' cannot be opened: {_why(err, url)}") from None


@contextmanager
def _one_at_a_time(url: str) -> Iterator[None]:
    """On PostgreSQL, open the storage under a database-wide lock.

    Opening creates Optuna's tables if they are missing (and stamps their version), in steps each
    of which collides (duplicate key, type already exists) when machines start together on a fresh
    database. An advisory lock, held by its own connection, lets them create the tables one by one.
    """
    if not url.startswith("postgres"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:  # closing it releases the lock
            connection.execute(sqlalchemy.text(f"SELECT pg_advisory_lock({_CREATE_LOCK})"))
            yield
    finally:
        engine.dispose()


def _why(err: Exception, url: str) -> str:
    """One line on why a storage did not open: its missing driver and what to install, or the error."""
    # SQLAlchemy raises the ModuleNotFoundError; Optuna wraps it in an ImportError that does not name it.
    missing = next((e for e in (err, err.__cause__) if isinstance(e, ModuleNotFoundError)), None)
    if missing is not None:
        install = ": pip install -e '.[postgres]'" if url.startswith("postgres") else ""
        return f"its database driver '{missing.name}' is not installed{install}"
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return detail.replace(url, shown(url))[:200]  # some errors quote the URL, password and all


def study_names(storage) -> list[str]:
    """The names of the studies a storage holds."""
    return [s.study_name for s in storage.get_all_studies()]


def find_storage(name: str, root: str, storage: str | None) -> str:
    """The storage URL of study ``name``: ``storage`` if given, else the file in ``root/name/``."""
    if storage:
        return storage_url(storage, Path(root) / name)
    folder = Path(root) / name
    for file, url in ((SQLITE_FILE, f"sqlite:///{folder / SQLITE_FILE}"), (JOURNAL_FILE, str(folder / JOURNAL_FILE))):
        if (folder / file).is_file():
            return url
    found = sorted(p.parent.name for p in Path(root).glob(f"*/{SQLITE_FILE}")) + sorted(
        p.parent.name for p in Path(root).glob(f"*/{JOURNAL_FILE}"))
    listing = f"studies there: {', '.join(found)}" if found else "no studies there"
    raise ConfigError(f"no study '{name}' under {root}/ ({listing}); for a database give --storage URL")


def load_existing(name: str, url: str) -> optuna.Study:
    """Load study ``name`` from ``url``, or a ConfigError naming the studies that storage holds."""
    file = url if is_journal(url) else url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if file is not None and not Path(file).is_file():  # opening would create an empty one
        raise ConfigError(f"no study '{name}': storage file '{file}' does not exist")
    storage = open_storage(url)
    names = study_names(storage)
    if name not in names:
        raise ConfigError(f"no study '{name}' in storage '{shown(url)}'; it holds: {', '.join(names) or 'no studies'}")
    return optuna.load_study(study_name=name, storage=storage)
