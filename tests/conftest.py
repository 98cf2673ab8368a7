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


def shared_folder(tmp_path_factory, name: str, build) -> Path:
    """A folder built once per test session by ``build(folder)``, even when xdist spreads the tests that read
    it over its workers (a shared base folder and a file lock, as xdist's documentation does for session
    fixtures). ``build`` runs once; a ``.built`` marker tells the other workers it finished."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()  # under xdist, its parent is this session's, shared by workers
    folder = (shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared) / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / ".built").touch()
    return folder
