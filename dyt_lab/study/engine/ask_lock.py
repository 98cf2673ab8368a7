"""The ask lock: one file in the study folder that local workers take in turn before they ask for a trial.

Under it a worker reaps dead trials, counts, and asks, so two workers on this machine never both see
"one trial short" and both ask; a rerun queues its retries under it too. Workers on other machines
share no lock file: the storage's own transactions and the heartbeat keep them apart.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

LOCK_FILE = ".ask.lock"


class AskLock:
    """An exclusive lock on the file ``path``, taken by ``acquire`` and given back by ``release``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    @classmethod
    def of(cls, folder: Path) -> AskLock:
        """The ask lock of the study in ``folder``."""
        return cls(folder / LOCK_FILE)

    def acquire(self) -> None:
        """Wait for the lock, then hold it."""
        self._file = open(self.path, "a")  # held across calls; closed in release()
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def release(self) -> None:
        """Release the lock; calling it again does nothing."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
