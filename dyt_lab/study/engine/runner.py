"""Run a study: check it, create or resume it in its storage, and run trials in one or more workers.

``run_study`` is the whole of ``dyt-lab study run`` in four steps, each in a module of its own:
``prepare`` checks everything and creates the study (then queues fixed runs and the retries of failed
ones), ``worker`` is one worker's loop of trials, ``pool`` starts several workers and deals them the
GPUs, and the summary comes from ``replicates``. What a fault looks like is in ``faults``: a study folder
that cannot be written (read-only, no permission, a full disk) is one error line before any trial, and
a disk that fills up mid-study one line naming the file.
"""

from __future__ import annotations

import optuna

from dyt_lab.errors import EXIT_INTERRUPTED, ConfigError
from dyt_lab.study.definition.storage import open_storage, storage_url
from dyt_lab.study.definition.study_file import StudySpec
from dyt_lab.study.engine.faults import disk_faults, storage_shown, unfinished_line
from dyt_lab.study.engine.launch import warm_up
from dyt_lab.study.engine.objective import base_args
from dyt_lab.study.engine.pool import spawn_workers
from dyt_lab.study.engine.prepare import enqueue, prepare, retry_failed
from dyt_lab.study.engine.replicates import summary_line
from dyt_lab.study.engine.worker import work


def run_study(spec: StudySpec, queue: list[dict] | None = None, attrs: dict | None = None,
              only_queued: bool = False) -> None:
    """``dyt-lab study run``: prepare, retry failed runs, run the workers, print where the report is.

    ``queue`` holds configurations (Optuna params) to run first, ``attrs`` study attributes to record
    (``dyt-lab study confirm`` uses both); ``only_queued``: the queue is all the study runs, so each queued
    configuration is checked whole (a holdout's arms). Ends in one ``error:`` line if a run has no completed trial.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial comes from TrialObjective
    if spec.workers == 1 and spec.isolation == "warm":
        warm_up(base_args(spec))  # its imports run beside the checks below, on the other core
    gpus = prepare(spec, queue if only_queued else None)
    url = storage_url(spec.storage, spec.folder)
    with disk_faults(storage_shown(url)):
        if queue or attrs:
            enqueue(spec, queue or [], attrs or {})
        retried = retry_failed(spec, url)
    code = work(spec, 0) if spec.workers == 1 else spawn_workers(spec, gpus)
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(url))
    print(summary_line(study, spec, retried))
    if code == EXIT_INTERRUPTED:
        print(f"interrupted: run the same command (or `dyt-lab study resume {spec.study_name}`) to continue")
        raise SystemExit(code)
    print(f"report: dyt-lab study report {spec.study_name}" + (f" --root {spec.root}" if spec.root != "studies" else ""))
    if code:
        raise SystemExit(code)
    if line := unfinished_line(study, spec):
        raise ConfigError(line)
