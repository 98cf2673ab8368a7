"""What a study worker and its trial's ``dyt-lab fit`` process share: the binding and the result file.

The worker passes the trial's identity in the ``DYT_LAB_STUDY_TRIAL`` environment variable (JSON);
the trial's StudyPruning callback reports to the storage and leaves its epoch history in a JSON
result file that the worker reads when the trial ends. A fit that fails adds why to that file
(``record_failure``: ``error``, its one line, and ``kind``), so the worker reads the reason
instead of scraping the trial's stderr. A trial dies with its worker (``die_with_parent``). Both sides
import this module and nothing else of each other; the names a trial's record is stored under are in
``dyt_lab.study.attributes``.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import sys
from pathlib import Path

RESULT_FILE = "study_result.json"
PRUNING_CALLBACK = "dyt_lab.study.trial.pruning.StudyPruning"
TRIAL_ENV = "DYT_LAB_STUDY_TRIAL"  # JSON: which trial of which study a fit process reports to
SEED_KEY = "seed_everything"  # the fit flag a seed run's seed (attributes.SEED) sets
# A failed fit's ``kind`` (dyt_lab.errors.failure_kind, or interrupted). The first three printed their
# ``error`` as an ``error:`` line; a crash's is its traceback's last line, an interruption's "interrupted".
LINE_KINDS = ("config", "disk", "diverged")
KINDS = (*LINE_KINDS, "interrupted", "crashed")
EVERY_TRIAL = "every_trial"  # result key: true when every trial of the study would fail the same way
PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so no orphan trial keeps training.

    With ``expected_parent``, exit at once if the parent is already gone (it died before the call).
    Elsewhere than Linux this does nothing; an orphaned trial then runs to its end unobserved.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def is_rank_zero() -> bool:
    """Whether this process is a fit's first (or only) rank: the one that reports and writes the result."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def objective_value(history: dict[int, float], direction: str, which: str) -> float:
    """The value a trial counts for: its best epoch's or its last epoch's (NaN epochs never best)."""
    if not history:
        return math.nan
    if which == "last":
        return history[max(history)]
    finite = [v for v in history.values() if not math.isnan(v)]
    if not finite:
        return math.nan
    return max(finite) if direction == "maximize" else min(finite)


def write_result(path: str | Path, result: dict) -> None:
    """Replace the trial's result file in one step, so the worker never reads half of it."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def record_failure(error: str, kind: str) -> None:
    """In a trial's fit process (rank 0): add ``error`` and its ``kind`` to the result file; elsewhere nothing.

    Written in place, not through a temporary file: the run is over, so no reader waits, and on a full
    disk the file's own space can still be rewritten. A write that fails anyway is left out; the
    worker then finds no error, and checks the disk's free space itself.
    """
    raw = os.environ.get(TRIAL_ENV)
    if not raw or not is_rank_zero():
        return
    path = Path(json.loads(raw)["result"])
    try:
        result = read_result(path)
        path.write_text(json.dumps({**result, "error": error, "kind": kind}, indent=1))
    except (OSError, ValueError):
        pass


def read_result(path: str | Path) -> dict:
    """The trial's result file, or an empty result if the trial never wrote one."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
