"""Shared test set-up: quiet, deterministic, and nothing written outside tmp folders."""

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
