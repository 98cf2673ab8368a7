"""One trial = one ``dyt-lab fit`` process with the base configs plus the sampled values (and its seed).

A process per trial isolates everything a trial can break: an out-of-memory trial's memory is
freed when it exits, a DDP trial uses Lightning's own launcher, and ``kill -9`` means what it says.
The process is forked from a warm one or started fresh (``launch.py``); ``command.txt`` re-runs it.
The trial's run folder (``<study>/trials/trial_NNNN-<its values>``, named by ``trial_dir_name`` alone) holds
its TensorBoard events, the resolved config.yaml, checkpoints, stdout/stderr and the result file its
StudyPruning callback writes. Its row in TensorBoard's HParams tab is written when it ends, with its state
(``trial_row``): a trial stopped after one epoch is never a row that looks like a finished one.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import optuna
import yaml

from dyt_lab.config_keys import flatten
from dyt_lab.errors import EXIT_DIVERGED
from dyt_lab.study.attributes import (
    CONFIG,
    CONFIGURATION,
    EPOCHS,
    EXIT_CODE,
    FAIL_REASON,
    FIT_TIME,
    LAST_METRICS,
    RETRY_OF,
    RUN_DIR,
    SEED,
    TEST_METRICS,
    TRIAL_PID,
    WALL_TIME,
    WORKER,
)
from dyt_lab.study.definition.space import Configuration, SearchSpace, config_flag
from dyt_lab.study.definition.storage import retry_history, trial_id
from dyt_lab.study.definition.study_file import TRIALS, StudySpec
from dyt_lab.study.engine.faults import (
    INTERRUPTED,
    disk_full_reason,
    failure_reason,
    not_finite_reason,
    outside_space_reason,
    timeout_reason,
    unwritable_reason,
)
from dyt_lab.study.engine.launch import fit_command, start_trial
from dyt_lab.study.engine.liveness import worker_tag
from dyt_lab.study.engine.replicates import configuration_key, first_free_seed, queue_missing_seeds, runs
from dyt_lab.study.trial.protocol import (
    EVERY_TRIAL,
    PRUNING_CALLBACK,
    RESULT_FILE,
    SEED_KEY,
    TRIAL_ENV,
    objective_value,
    read_result,
)

# HParams columns a trial's row gets when it ends: how it ended (complete, pruned, failed, diverged,
# interrupted), and the trial it runs again (empty if it is no retry)
STATE_COLUMN, RETRY_COLUMN = "trial.state", "trial.retry_of"


def base_args(spec: StudySpec) -> list[str]:
    """The fit arguments every trial shares: base configs, quiet logs, fixed overrides."""
    args = [arg for path in spec.base.configs for arg in ("--config", path)]
    args.append("--trainer.enable_progress_bar=false")  # output goes to a file; a bar there is noise
    # as dotted keys, a class (class_path and its arguments) as one value: what one flag can set
    return args + [config_flag(k, v) for k, v in flatten(spec.base.overrides, whole_classes=True).items()]


def study_args(spec: StudySpec, run_dir: Path) -> list[str]:
    """The fit arguments the study owns: the trial's TensorBoard run in ``run_dir``, the pruning callback.

    Every trial's run marks the same columns as varied (the searched keys with more than one value,
    the seed, and the trial's state), since TensorBoard takes the HParams experiment summary of whichever
    run it reads first. The run declares the state columns and leaves its row to the worker (``trial_row``).
    """
    varied = [key for key, dist in SearchSpace(spec.search_space).distributions.items() if not dist.single()]
    varied += [SEED_KEY] if spec.seeds and len(spec.seeds) > 1 else []
    metrics = list(dict.fromkeys([spec.objective.metric, "val/acc_best", "test/acc", "train/loss_epoch"]))
    logger = {"class_path": "dyt_lab.training.records.HParamsLogger",
              "init_args": {"save_dir": str(run_dir.parent.parent), "name": run_dir.parent.name,
                            "version": run_dir.name, "default_hp_metric": False, "varied": [*varied, STATE_COLUMN],
                            "metrics": metrics, "outcome_columns": [STATE_COLUMN, RETRY_COLUMN]}}
    # Every trial tests its best checkpoint, so the report carries held-out test accuracy beside val/acc_best.
    return [config_flag("trainer.logger", logger), f"--trainer.callbacks+={PRUNING_CALLBACK}", "--test_after_fit=true"]


# Characters of a trial's folder name: one line in TensorBoard's run list, far below file name limits.
TRIAL_NAME_LIMIT = 120


def trial_dir_name(trial: optuna.Trial | optuna.trial.FrozenTrial, configuration: Configuration) -> str:
    """The trial's folder and TensorBoard run: ``trial_0007-alpha_init=0.5-lr=0.002-norm=dyt-seed=1``.

    The number first, so folders sort in trial order; its configuration's label; its seed; at most
    ``TRIAL_NAME_LIMIT`` characters.
    """
    seed = trial.user_attrs.get(SEED)
    head, tail = f"trial_{trial.number:04d}", "" if seed is None else f"-seed={seed}"
    middle = f"-{configuration.label()}" if configuration.label() else ""
    return head + middle[:TRIAL_NAME_LIMIT - len(head) - len(tail)] + tail


def retried_trial(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial this one runs again: the last in Optuna's retry history (a dead worker's or
    an interrupted trial's), else the failed trial a rerun queued it for (RETRY_OF); None for no retry."""
    history = retry_history(trial)
    if history:  # first: Optuna's retry copies the user attributes, an older retry_of among them
        return history[-1]
    return None if trial.user_attrs.get(RETRY_OF) is None else int(trial.user_attrs[RETRY_OF])


def trial_row(run_dir: Path, state: str, retry_of: int | None, started: float, fallback: dict) -> None:
    """Write the trial's row in TensorBoard's HParams tab as it ended, in an event file of its own in ``run_dir``:
    the hyperparameters its fit recorded in hparams.yaml (``fallback``, the searched values and the seed, if it
    ended before), ``trial.state`` and ``trial.retry_of``. TensorBoard keeps the first row a run has, so the
    fit writes none (``HParamsLogger(outcome_columns=...)``)."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.plugins.hparams import summary_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    if not run_dir.is_dir():  # removed meanwhile: the writer would make it again, for this file alone
        return
    recorded = run_dir / "hparams.yaml"
    hparams = (yaml.safe_load(recorded.read_text()) or {}) if recorded.is_file() else fallback
    hparams = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
               for key, value in hparams.items()}
    hparams.update({STATE_COLUMN: state, RETRY_COLUMN: "" if retry_of is None else str(retry_of)})
    writer = EventFileWriter(str(run_dir))
    writer.add_event(Event(wall_time=time.time(), summary=summary_v2.hparams_pb(hparams, trial_id="",
                                                                                start_time_secs=started)))
    writer.close()  # its thread writes: a full disk raises here


class TrialObjective:
    """The Optuna objective: run one trial's fit process and turn its outcome into a value or a state."""

    def __init__(self, spec: StudySpec, space: SearchSpace, storage_url: str, storage, retry, log=print) -> None:
        """``storage``: the worker's own storage object (opened from ``storage_url``), which the study uses."""
        self.spec, self.space, self.storage_url, self.storage = spec, space, storage_url, storage
        self.retry, self.log = retry, log
        self.on_start = None  # called once the trial exists in the storage (the runner's ask lock)
        self.isolation = spec.isolation  # the runner may fall back to "process" (DDP trials)
        self.fatal: str | None = None  # set when every further trial would fail the same way

    def __call__(self, trial: optuna.Trial) -> float:
        spec = self.spec
        try:
            # Before the ask lock is released, so that another worker's reaper never sees this RUNNING
            # trial without its worker, or with the dead worker a retry queued by an older dyt-lab carries
            # (GitHub issue 13; clean_retry queues retries without it now).
            trial.set_user_attr(WORKER, worker_tag())
            trial.set_user_attr(FAIL_REASON, None)  # nor does it keep its predecessor's failure
            configuration = self.space.suggest(trial)
            trial.set_user_attr(CONFIGURATION, configuration_key(trial))
            if spec.seeds:  # this seed run's seed, and the configuration's other seeds queued next
                trial.set_user_attr(SEED, first_free_seed(trial.study, trial, spec.seeds))
                queue_missing_seeds(trial.study, spec.seeds)
        except ValueError as err:  # a queued retry whose values the edited search space no longer allows
            trial.set_user_attr(FAIL_REASON, outside_space_reason(err))
            return math.nan
        finally:
            if self.on_start is not None:
                self.on_start()
        number, seed = trial.number, trial.user_attrs.get(SEED)
        run_dir = spec.folder / TRIALS / trial_dir_name(trial, configuration)
        trial.set_user_attr(RUN_DIR, str(run_dir))
        fit_args = [*base_args(spec), *configuration.flags(),
                    *([config_flag(SEED_KEY, seed)] if seed is not None else []), *study_args(spec, run_dir)]
        tid = self._trial_id(trial)
        binding = {"storage": self.storage_url, "study_name": spec.study_name, "trial_id": tid,
                   "pruner": {"name": spec.pruner.name, "kwargs": spec.pruner.kwargs},
                   "metric": spec.objective.metric, "direction": spec.objective.direction,
                   "value": spec.objective.value, "result": str(run_dir / RESULT_FILE), "parent_pid": os.getpid()}
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        self.log(f"trial {number} started: {shown}" + (f" seed={seed}" if seed is not None else ""))
        fallback = {k: v for k, v in {**configuration.values, SEED_KEY: seed}.items() if v is not None}
        started, row = time.monotonic(), dict(run_dir=run_dir, retry_of=retried_trial(self.storage.get_trial(tid)),
                                              started=time.time(), fallback=fallback)
        try:  # the trial folder's own writes: a full or read-only disk fails the trial, and stops the study
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "command.txt").write_text(shlex.join(fit_command(fit_args)) + "\n")  # to re-run it by hand
            (run_dir / RESULT_FILE).unlink(missing_ok=True)
            proc = start_trial(self.isolation, fit_args, {**os.environ, TRIAL_ENV: json.dumps(binding)}, run_dir)
        except OSError as err:
            return self._unwritable(trial, err, run_dir)
        try:
            code = self._wait(trial, proc, run_dir, started)
        except KeyboardInterrupt:
            self._row(trial, "interrupted", row)
            raise
        try:
            value = self._outcome(trial, code, run_dir, time.monotonic() - started)
        except optuna.TrialPruned:
            self._row(trial, "pruned", row)
            raise
        self._row(trial, "complete" if not math.isnan(value) else "diverged" if code == EXIT_DIVERGED else "failed",
                  row)
        return value

    def _row(self, trial: optuna.Trial, state: str, row: dict) -> None:
        """The trial's row in TensorBoard's HParams tab (``row``: trial_row's other arguments)."""
        try:
            trial_row(state=state, **row)
        except (OSError, yaml.YAMLError) as err:  # a full disk, a half-written hparams.yaml: the trial's result stands
            self.log(f"trial {trial.number}: no TensorBoard row ({type(err).__name__}: {err})")

    def _trial_id(self, trial: optuna.Trial) -> int:
        """The trial's storage id (what the trial process and the storage's methods take)."""
        return trial_id(self.storage, self.spec.study_name, trial.number)

    def _unwritable(self, trial: optuna.Trial, err: OSError, run_dir: Path) -> float:
        """The trial folder cannot be written: fail the trial with that one line; every next trial would too."""
        reason = unwritable_reason(err, run_dir)
        if reason is None:
            raise err
        self.fatal = reason
        trial.set_user_attr(FAIL_REASON, reason)
        self.log(f"trial {trial.number} FAILED: {reason}")
        return math.nan

    def _wait(self, trial: optuna.Trial, proc, run_dir: Path, started: float) -> int | None:
        """Wait for the fit to end (None: killed for exceeding trial_timeout)."""
        trial.set_user_attr(TRIAL_PID, proc.pid)
        try:
            return proc.wait(timeout=self.spec.trial_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
        except KeyboardInterrupt:
            self._interrupted(trial, proc, run_dir, started)
            raise

    def _interrupted(self, trial: optuna.Trial, proc, run_dir: Path, started: float) -> None:
        """Ctrl-C or SIGTERM: stop the fit, and queue this configuration to run again on resume."""
        proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C has reached it already; a SIGTERM has not
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        trial.set_user_attr(EPOCHS, read_result(run_dir / RESULT_FILE).get("epochs", 0))
        trial.set_user_attr(WALL_TIME, round(time.monotonic() - started, 1))
        trial.set_user_attr(FAIL_REASON, INTERRUPTED)
        self.retry(trial.study, self.storage.get_trial(self._trial_id(trial)))
        self.log(f"trial {trial.number} interrupted")

    def _outcome(self, trial: optuna.Trial, code: int | None, run_dir: Path, seconds: float) -> float:
        """Record the trial's attributes; return its value, raise TrialPruned, or return NaN (failed)."""
        objective = self.spec.objective
        result = read_result(run_dir / RESULT_FILE)
        history = {int(epoch): value for epoch, value in result.get("history", {}).items()}
        trial.set_user_attr(EPOCHS, result.get("epochs", 0))
        if result.get("fit_seconds") is not None:
            trial.set_user_attr(FIT_TIME, result["fit_seconds"])  # the rest of WALL_TIME is start-up
        metrics = result.get("metrics") or {}
        if metrics:  # the last epoch's accuracy and losses, for the report's tables
            trial.set_user_attr(LAST_METRICS, metrics[max(metrics, key=int)])
        if result.get("test"):  # the best checkpoint on the held-out test split
            trial.set_user_attr(TEST_METRICS, result["test"])
        trial.set_user_attr(WALL_TIME, round(seconds, 1))
        trial.set_user_attr(EXIT_CODE, code)
        if (run_dir / "config.yaml").is_file():
            trial.set_user_attr(CONFIG, str(run_dir / "config.yaml"))
        # The trial process reported these already; reporting again here makes this process's
        # (cached) view of the trial agree with the storage before Optuna records the final state.
        for epoch in sorted(history):
            subset = {e: v for e, v in history.items() if e <= epoch}
            trial.report(objective_value(subset, objective.direction, objective.value), step=epoch)
        value = objective_value(history, objective.direction, objective.value)
        took = f"{runs(result.get('epochs', 0), 'epoch')}, {seconds:.0f} s"
        if code == 0 and result.get("pruned"):
            self.log(f"trial {trial.number} PRUNED at epoch {max(history)}: {objective.metric}={value:.4g} ({took})")
            raise optuna.TrialPruned(f"pruned at epoch {max(history)}")
        if code == 0 and not math.isnan(value):
            self.log(f"trial {trial.number} COMPLETE: {objective.metric}={value:.4g} ({objective.value}; {took})")
            return value
        if result.get(EVERY_TRIAL):  # e.g. the objective's metric is not logged
            reason = self.fatal = result["error"]
        elif code is None:
            reason = timeout_reason(self.spec.trial_timeout)
        elif code == 0:
            reason = not_finite_reason(objective.metric)
        else:
            reason = failure_reason(code, result)
            full = disk_full_reason(reason, result, run_dir) if code > 0 else None
            if full is not None:  # every next trial writes to the same disk
                reason = self.fatal = full
        trial.set_user_attr(FAIL_REASON, reason)
        self.log(f"trial {trial.number} FAILED: {reason} ({took}; logs: {run_dir})")
        return math.nan  # Optuna records a NaN objective as FAIL without a traceback in the log
