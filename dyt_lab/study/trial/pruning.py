"""Inside a trial's ``dyt-lab fit`` process: report the objective each validation epoch, stop if pruned.

The study adds ``--trainer.callbacks+=dyt_lab.study.trial.pruning.StudyPruning`` to every trial and
passes the trial's identity in the ``DYT_LAB_STUDY_TRIAL`` environment variable (JSON). Without
that variable the callback does nothing, so a trial's saved config.yaml re-runs as a plain fit.

Why not ``optuna_integration.PyTorchLightningPruningCallback``: it needs the live ``Trial``
object (a trial here is another process), raises ``TrialPruned`` out of ``fit`` (the CLI would
exit with a traceback), and refuses journal storages under DDP. This one reconnects to the
storage by study name and trial id, reports from rank 0 only, broadcasts the decision so every
DDP rank stops together, and leaves the result in a JSON file the worker reads.
"""

from __future__ import annotations

import json
import os
import time

from lightning.pytorch import Callback, LightningModule, Trainer

from dyt_lab.errors import ConfigError
from dyt_lab.study.trial.protocol import EVERY_TRIAL, TRIAL_ENV, is_rank_zero, objective_value, write_result

RECORDED = ("val/", "train/")  # the epoch's metrics kept in the result file: accuracy and loss, both splits


class StudyPruning(Callback):
    """Report the study's objective to the trial after each validation epoch; stop the run if pruned."""

    def __init__(self) -> None:
        raw = os.environ.get(TRIAL_ENV)
        self.binding = json.loads(raw) if raw else None
        self.history: dict[int, float] = {}
        self.metrics: dict[int, dict[str, float]] = {}  # epoch -> the epoch's logged scalars, for the report
        self.test: dict[str, float] = {}  # test/acc, test/loss of the best checkpoint, if the run tests it
        self._trial = None
        self.pruned = False
        self._fit_started: float | None = None  # what the study-overhead benchmark subtracts from a trial's time
        if self.binding:
            from dyt_lab.study.trial.protocol import die_with_parent

            # Rank 0's parent is the study worker; other DDP ranks are children of rank 0.
            die_with_parent(self.binding["parent_pid"] if is_rank_zero() else None)

    def _connect(self):
        """The trial, reopened by study name and trial id from this process (rank 0 only)."""
        if self._trial is None:
            import optuna

            from dyt_lab.study.definition.samplers import make_pruner
            from dyt_lab.study.definition.storage import open_storage
            from dyt_lab.study.definition.study_file import Pruner
            from dyt_lab.study.optuna_internals import reopen_trial

            b = self.binding
            study = optuna.load_study(study_name=b["study_name"], storage=open_storage(b["storage"]),
                                      sampler=optuna.samplers.RandomSampler(),
                                      pruner=make_pruner(Pruner(**b["pruner"])))
            self._trial = reopen_trial(study, b["trial_id"])
        return self._trial

    def _result(self, epoch: int, pruned: bool = False, error: str | None = None) -> dict:
        b = self.binding
        return {"metric": b["metric"], "history": self.history, "epochs": epoch + 1,
                "value": objective_value(self.history, b["direction"], b["value"]),
                "metrics": self.metrics, "test": self.test, "pruned": pruned, "error": error,
                # an objective this run does not log, no trial of the study logs: the study stops
                "kind": "config" if error else None, EVERY_TRIAL: bool(error),
                "fit_seconds": round(time.monotonic() - self._fit_started, 3) if self._fit_started else None}

    def _decide(self, trainer: Trainer, epoch: int) -> dict:
        """Rank 0: record this epoch's value, report it, and ask the pruner."""
        b = self.binding
        metric = trainer.callback_metrics.get(b["metric"])
        if metric is None:
            logged = ", ".join(sorted(k for k in trainer.callback_metrics if not k.startswith("_"))) or "none"
            message = f"objective metric '{b['metric']}' is not logged by this run; logged metrics: {logged}"
            write_result(b["result"], self._result(epoch, error=message))
            return {"stop": True, "error": message}
        self.history[epoch] = float(metric)
        self._record(trainer, epoch)
        # The pruner compares trials at the same epoch by what each would score if it stopped now.
        reported = objective_value(self.history, b["direction"], b["value"])
        trial = self._connect()
        trial.report(reported, step=epoch)
        self.pruned = bool(trial.should_prune())  # a numpy bool from some pruners
        write_result(b["result"], self._result(epoch, pruned=self.pruned))
        return {"stop": self.pruned, "error": None}

    def _record(self, trainer: Trainer, epoch: int) -> None:
        """Keep the epoch's scalar metrics (accuracy and loss on both splits) for the study report."""
        self.metrics.setdefault(epoch, {}).update(
            {k: float(v) for k, v in trainer.callback_metrics.items()
             if k.startswith(RECORDED) and getattr(v, "numel", lambda: 1)() == 1})

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.binding is None or trainer.sanity_checking:
            return
        decision = self._decide(trainer, trainer.current_epoch) if trainer.is_global_zero else None
        decision = trainer.strategy.broadcast(decision)  # every rank stops (or raises) together
        if decision["error"]:
            raise ConfigError(decision["error"])
        if decision["stop"]:
            trainer.should_stop = True

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_started = time.monotonic()

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The test pass of ``--test_after_fit`` (the best checkpoint on the held-out split).
        if self.binding is None or not trainer.is_global_zero or not self.history:
            return
        self.test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        write_result(self.binding["result"], self._result(max(self.history), pruned=self.pruned))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The epoch's training metrics are logged after its validation: add the last epoch's now.
        if self.binding is None or not trainer.is_global_zero or not self.history:
            return
        self._record(trainer, max(self.history))
        write_result(self.binding["result"], self._result(max(self.history), pruned=self.pruned))
