"""Shared test set-up: quiet, deterministic, and nothing written outside tmp folders.

tests/ mirrors the package: the tests of ``dyt_lab/norms/`` are in ``tests/norms/``, those of ``dyt_lab/study/`` in
``tests/study/`` (``test_definition.py``, ``test_engine_*.py``, ``test_trial.py``, ``test_report*.py``, ...), and so
on; the tests of the top-level modules and of what crosses the packages (the import layers, the CLI, the
bad-input table, the shipped configs) sit here. Each folder is a package (``__init__.py``), so two folders may
hold test files of the same name.

What tests share, once: a fixture (it needs pytest's tmp folders, monkeypatch or a teardown) lives in a
``conftest.py``: this one for every test, ``tests/study/conftest.py`` for the study's. A plain function or
constant lives in ``tests/helpers.py`` (or, used only by the study's tests, ``tests/study/helpers.py``) and is
imported by name: a ``parametrize`` list or a module-scoped fixture can call it with its own arguments, and a
reader can jump to it. Nothing imports a conftest (pytest loads it itself).
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

