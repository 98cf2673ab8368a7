"""Shared test set-up: quiet, deterministic, and nothing written outside tmp folders.

tests/ mirrors the package: the tests of ``dyt_lab/norms/`` are in ``tests/norms/``, of ``dyt_lab/study/`` in
``tests/study/`` (``test_definition.py``, ``test_engine_*.py``, ``test_report_*.py``, ...), and the tests of the
top-level modules and of what crosses them (the layers, the CLI, the bad-input table, the shipped configs) here.
The convention for what tests share: fixtures (they need pytest's tmp folders, monkeypatch or teardown) live
in a ``conftest.py``: this one for every test, ``tests/study/conftest.py`` for the study's; plain functions and
constants live in ``tests/helpers.py`` (and ``tests/study/helpers.py``), imported by name. A conftest is not
imported by tests (pytest loads it; importing it again is what its documentation warns against).
"""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # xdist runs one worker per core


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of ``size`` at a folder (root only; skips, saying why, elsewhere); ``remount_ro``
    makes it read-only. Unmounted after the test."""
    from tests.helpers import mount_tmpfs, unmount

    mounted = []

    def mount(name: str, size: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        reason = mount_tmpfs(folder, size)
        if reason:
            print(reason)
            pytest.skip(reason)
        mounted.append(folder)
        return folder

    def remount_ro(folder: Path) -> None:
        import subprocess

        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)

    mount.remount_ro = remount_ro
    yield mount
    for folder in mounted:
        unmount(folder)

