"""A trial's own fit process (``study/trial/protocol.py``): the one place a fit turns an exception into its
``error:`` line and exit code records both in the trial's result file."""

from __future__ import annotations

import errno
import json
import os

import pytest

from dyt_lab import errors
from dyt_lab.errors import ConfigError
from dyt_lab.study.trial.protocol import RESULT_FILE, TRIAL_ENV, record_failure
from tests.helpers import last_line

DISK_LINE = "cannot write '/x/last.ckpt' ({}); free space or choose another folder, then run the command again"
ENDINGS = {  # what a fit process raises -> the kind and line it records, and its exit code
    "config": (ConfigError("model.norm 'dtt' is not a norm"), "config", "model.norm 'dtt' is not a norm", 2),
    "diverged": (errors.DivergenceError("diverged at step 3: loss=nan"), "diverged", "diverged at step 3: loss=nan", 3),
    "disk": (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/last.ckpt"), "disk",
             "disk full: " + DISK_LINE.format(os.strerror(errno.ENOSPC)), 2),
    "read_only": (OSError(errno.EROFS, os.strerror(errno.EROFS), "/x/last.ckpt"), "disk",
                  "read-only file system: " + DISK_LINE.format(os.strerror(errno.EROFS)), 2),
    "permission": (OSError(errno.EACCES, os.strerror(errno.EACCES), "/x/last.ckpt"), "config",
                   "permission denied: " + DISK_LINE.format(os.strerror(errno.EACCES)), 2),
    "bug": (RuntimeError("something else"), "crashed", "RuntimeError: something else", None),
    "ctrl_c": (KeyboardInterrupt(), "interrupted", "interrupted", 130),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_fit_process_records_its_error_line_and_kind_in_its_result_file(tmp_path, monkeypatch, capsys, ending):
    """The one place a fit turns an exception into its ``error:`` line and exit code also records both,
    keeping what the result file held; only with a trial binding, and only on rank 0."""
    raised, kind, line, code = ENDINGS[ending]
    result = tmp_path / RESULT_FILE
    result.write_text(json.dumps({"history": {"0": 0.5}, "epochs": 1, "error": None}))

    def end() -> int | None:
        try:
            with errors.one_line_errors(record_failure), errors.interrupted_quietly():
                raise raised
        except SystemExit as stop:
            return stop.code
        except BaseException as err:
            assert err is raised  # a bug keeps its traceback
            return None

    monkeypatch.delenv(TRIAL_ENV, raising=False)
    assert end() == code and json.loads(result.read_text())["error"] is None  # a plain fit: nothing recorded
    monkeypatch.setenv(TRIAL_ENV, json.dumps({"result": str(result)}))
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert end() == code and json.loads(result.read_text())["error"] is None  # a DDP rank but the first
    monkeypatch.setenv("LOCAL_RANK", "0")
    capsys.readouterr()
    assert end() == code
    assert json.loads(result.read_text()) == {"history": {"0": 0.5}, "epochs": 1, "error": line, "kind": kind}
    if kind in ("config", "diverged", "disk"):  # the line recorded is the line the user sees
        assert last_line(capsys.readouterr().err) == f"error: {line}"
