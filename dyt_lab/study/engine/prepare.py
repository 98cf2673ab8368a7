"""Before any trial: check everything a study can get wrong, then create it, queue its fixed runs and its retries.

The checks run in the order of their cost, so a typo costs no seconds of building runs: the folders can
be written, the search space, sampler and pruner are valid, an existing study keeps its objective and
space (``precheck.check_unchanged``), then every value a trial can draw builds as ``dyt-lab fit`` builds it
(``precheck.check_trials``) and the design's reference is a cell of it. Only then is anything written: the
study in its storage with its attributes, ``study.yaml`` in its folder, and the queue.
"""

from __future__ import annotations

import sys
import warnings

import optuna
import yaml

from dyt_lab.errors import check_writable
from dyt_lab.study.attributes import DESIGN, OBJECTIVE, SEARCH_SPACE, SEED
from dyt_lab.study.definition.design import check_design
from dyt_lab.study.definition.samplers import check_sampler, make_pruner
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.definition.storage import is_journal, open_storage, storage_url
from dyt_lab.study.definition.study_file import SPEC_FILE, TRIALS, StudySpec
from dyt_lab.study.engine.ask_lock import AskLock
from dyt_lab.study.engine.faults import disk_faults, storage_shown
from dyt_lab.study.engine.pool import visible_gpus
from dyt_lab.study.engine.precheck import check_trials, check_unchanged, space_record
from dyt_lab.study.engine.replicates import plan_retries, queue_retries, runs


def check_folders(spec: StudySpec) -> None:
    """The study folder and its trials folder can be written (checked before anything is written)."""
    purpose = "the study writes its storage, study.yaml and trial runs there"
    check_writable(spec.folder, "study folder", purpose)
    if (spec.folder / TRIALS).is_dir():  # a folder of its own (a link elsewhere, other rights)
        check_writable(spec.folder / TRIALS, "trials folder", "each trial writes its run folder there")


def prepare(spec: StudySpec, only: list[dict] | None = None) -> list[str]:
    """Check everything before any trial: folders, space, sampler, pruner, configs, storage; create the study.

    ``only``: the configurations (Optuna params) a study runs and nothing else, each checked whole.
    Returns the GPUs this process sees, which the workers share.
    """
    check_folders(spec)
    space = SearchSpace(spec.search_space)
    check_sampler(spec.sampler, space)
    make_pruner(spec.pruner)
    check_unchanged(spec, space)  # an existing study's objective and space: before seconds of building runs
    gpus = visible_gpus()
    print(f"study {spec.study_name}: checking {runs(len(space.distributions), 'searched key')} against dyt-lab fit ...",
          file=sys.stderr)
    exact = None if only is None else [space.configuration(params).values for params in only]
    if check_trials(spec, space, len(gpus), exact) and spec.isolation == "warm":
        print("note: trials run DDP (several devices or nodes), which starts its own processes: "
              "each trial starts as a fresh process (isolation: process)", file=sys.stderr)
        spec.isolation = "process"
    check_design(space, spec)
    url = storage_url(spec.storage, spec.folder)
    with disk_faults(storage_shown(url)):  # the disk filled up since the check, or a database refuses writes
        create_study(spec, url, space)
    with disk_faults(f"'{spec.folder / SPEC_FILE}'"):
        spec.folder.mkdir(parents=True, exist_ok=True)
        (spec.folder / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    if spec.workers > 1 and url.startswith("sqlite"):
        print(f"note: {spec.workers} workers on SQLite work, but storage: journal suits several processes "
              "better", file=sys.stderr)
    return gpus


def create_study(spec: StudySpec, url: str, space: SearchSpace) -> optuna.Study:
    """Create (or load) the study in its storage, with the study's direction, design and metric name."""
    if spec.storage in ("sqlite", "journal"):
        spec.folder.mkdir(parents=True, exist_ok=True)
    with_heartbeat = {} if is_journal(url) else {"heartbeat_interval": spec.heartbeat_interval,
                                                  "grace_period": spec.grace_period}
    study = optuna.create_study(study_name=spec.study_name, storage=open_storage(url, **with_heartbeat),
                                direction=spec.objective.direction, load_if_exists=True)
    with warnings.catch_warnings():  # experimental since Optuna 3.2, and what optuna-dashboard names the value by
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([spec.objective.metric])
    if SEARCH_SPACE not in study.user_attrs or not any(t.params for t in study.get_trials(deepcopy=False)):
        # what check_unchanged compares a later study file with, once a trial drew values from it
        study.set_user_attr(SEARCH_SPACE, space_record(space))
    study.set_user_attr(OBJECTIVE, {"metric": spec.objective.metric, "value": spec.objective.value})
    study.set_user_attr(DESIGN, {"seeds": spec.seeds, "reference": spec.reference, "gap_from": spec.gap_from,
                                 "margin": spec.margin})
    return study


def enqueue(spec: StudySpec, queue: list[dict], attrs: dict) -> None:
    """Queue fixed configurations (first seed; the others follow) unless queued before, and set study attributes."""
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(storage_url(spec.storage, spec.folder)))
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    first_seed = {SEED: spec.seeds[0]} if spec.seeds else None
    for params in queue:
        study.enqueue_trial(params, user_attrs=first_seed, skip_if_exists=True)


def retry_failed(spec: StudySpec, url: str) -> int:
    """Queue again each failed run that has no completed trial, as far as n_trials has room; return how many.

    Under the ask lock, so that two commands started together on this machine do not both queue them.
    """
    lock = AskLock.of(spec.folder)
    lock.acquire()
    try:
        study = optuna.load_study(study_name=spec.study_name, storage=open_storage(url))
        retry, _ = plan_retries(study, spec.n_trials, bool(spec.seeds))
        queue_retries(study, retry)
    finally:
        lock.release()
    if retry:
        numbers = ", ".join(str(t.number) for t in retry)
        print(f"study {spec.study_name}: retrying {runs(len(retry))} with no completed trial (failed: trial "
              f"{numbers})", flush=True)
    return len(retry)
