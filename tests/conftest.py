"""Shared test set-up: quiet, deterministic, and nothing written outside tmp folders."""

import os
import tempfile

os.environ.setdefault("MPLCONFIGDIR", tempfile.mkdtemp(prefix="mpl-"))
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # xdist runs one worker per core


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
