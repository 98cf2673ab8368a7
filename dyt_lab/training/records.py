"""Run records: the site -> norm table and the real hyperparameters in TensorBoard's HParams tab."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from dyt_lab.config_keys import flatten, short_key

# The HParams tab's metric columns (it shows the first five, with each run's latest value): the
# headline numbers first. test/acc exists when the run tests its best checkpoint (--test_after_fit);
# train/loss_epoch is the final training loss (the last epoch's mean, as the study report shows it).
HPARAM_METRICS = ("val/acc_best", "test/acc", "train/loss_epoch", "val/acc", "val/loss")
# What the HParams tab shows: the model and data arguments and the trainer settings that change results.
HPARAM_KEYS = ("model", "data", "seed_everything", "trainer.max_epochs", "trainer.max_steps", "trainer.precision",
               "trainer.devices", "trainer.num_nodes", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val")
# A run's real arguments, in this order. TensorBoard sorts the columns by `differs` (marked first), then by
# name, and ticks the first five, so a run marks these as differing unless its logger names what varied.
HPARAM_FIRST = ("model.norm", "model.placement", "model.alpha_init", "model.optimizer.lr", "seed_everything")


def flat_hparams(config: dict) -> dict[str, object]:
    """Nested config -> ``{"model.norm": "dyt", ...}`` of TensorBoard-friendly scalar values (short keys)."""
    # lists and None become text the HParams tab can still filter on; an empty mapping is no column
    return {key: value if isinstance(value, (bool, int, float, str)) else str(value)
            for key, value in flatten(config).items() if value != {}}


def run_hparams(config: dict) -> dict[str, object]:
    """The hyperparameters of a run's resolved config that the HParams tab shows, ``HPARAM_FIRST`` first."""
    shown = {k: v for k, v in flat_hparams(config).items()
             if any(k == key or k.startswith(f"{key}.") for key in HPARAM_KEYS)}
    return {**{k: shown[k] for k in HPARAM_FIRST if k in shown}, **shown}


def one_column_each(hparams: dict[str, object], keys) -> dict[str, object]:
    """``hparams`` with each of ``keys`` that holds a mapping (flattened into ``key.option`` columns) as one
    column, ``model.norm: "factored(center=none, scale=alpha, squash=tanh)"``, where the mapping's first column was.

    A plain run's real arguments then stay five columns, the five TensorBoard ticks; a study keeps a
    searched mapping's options apart, since each is a factor of its own.
    """
    folded: dict[str, object] = {}
    options: dict[str, dict[str, object]] = {}
    for name, value in hparams.items():
        key = next((k for k in keys if name.startswith(f"{k}.")), None)
        if key is None:
            folded[name] = value
        else:
            folded.setdefault(key, None)  # keeps the position of the mapping's first option
            options.setdefault(key, {})[name[len(key) + 1:]] = value
    for key, fields in options.items():
        rest = ", ".join(f"{k}={v}" for k, v in fields.items() if k != "name")
        folded[key] = f"{fields['name']}({rest})" if "name" in fields else rest
    return folded


def experiment_summary(hparams: dict[str, object], varied, metrics):
    """TensorBoard's HParams experiment summary: ``hparams``' columns, those under a ``varied`` key marked
    as differing and listed first, and ``metrics`` as its metric columns, in this order."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

    prefixes = [short_key(key) for key in varied]  # a mapping's options are columns of their own
    infos = []
    for name, value in hparams.items():
        info = api_pb2.HParamInfo(name=name, differs=any(name == p or name.startswith(f"{p}.") for p in prefixes))
        if isinstance(value, bool):  # both values, so that the tab can filter on it
            info.type = api_pb2.DATA_TYPE_BOOL
            info.domain_discrete.extend([False, True])
        else:  # no domain: the tab filters out runs whose value a discrete domain lacks
            info.type = api_pb2.DATA_TYPE_STRING if isinstance(value, str) else api_pb2.DATA_TYPE_FLOAT64
        infos.append(info)
    infos.sort(key=lambda info: not info.differs)  # stable: the others keep their order
    experiment = api_pb2.Experiment(hparam_infos=infos,
                                    metric_infos=[summary_v2.Metric(tag).as_proto() for tag in metrics])
    content = metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(experiment=experiment))
    summary = Summary()
    summary.value.add(tag=metadata.EXPERIMENT_TAG, metadata=content, tensor=metadata.NULL_TENSOR)
    return summary


class HParamsLogger(TensorBoardLogger):
    """TensorBoardLogger that names the config keys its runs vary and the metrics the HParams tab shows.

    TensorBoard uses the experiment summary of the first run it reads that has one, so the runs
    beside this one (a study's other trials) should name the same ``varied`` keys. By default it
    marks a run's real arguments (``HPARAM_FIRST``) and shows ``HPARAM_METRICS``, as a plain
    TensorBoardLogger's runs do.
    """

    def __init__(self, *args, varied: list[str] | None = None, metrics: list[str] | None = None,
                 outcome_columns: list[str] | None = None, **kwargs) -> None:
        """TensorBoardLogger's arguments, and:

        Args:
            varied: config keys (``model.optimizer.lr``) marked as differing; default ``HPARAM_FIRST``.
            metrics: scalar tags shown as the HParams tab's metric columns; default ``HPARAM_METRICS``.
            outcome_columns: columns only the run's end decides (a study trial's ``trial.state``): declared
                when the run starts, and its row left to whoever writes them when it ends (the study's worker).
        """
        super().__init__(*args, **kwargs)
        self.varied = list(HPARAM_FIRST if varied is None else varied)
        self.metrics = list(HPARAM_METRICS if metrics is None else metrics)
        self.outcome_columns = list(outcome_columns or [])


def log_hparams_to_tensorboard(trainer: Trainer, hparams: dict[str, object]) -> None:
    """Write the run's real hyperparameters into the HParams tab, with what varied and the metrics to show.

    Lightning's own path would also log a placeholder metric value (``hp_metric=-1``), and
    ``SummaryWriter.add_hparams`` writes into a new sub-run with the metrics as constants and marks
    nothing as differing; TensorBoard's experiment and session-start summaries, written into the
    run's own event file, declare the metrics without inventing a value for them. The session has
    no group name, so TensorBoard names its row by the run's folder.
    """
    from tensorboard.plugins.hparams import summary_v2

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            own = isinstance(logger, HParamsLogger)
            varied, metrics = (logger.varied, logger.metrics) if own else (HPARAM_FIRST, HPARAM_METRICS)
            logger.log_hyperparams(hparams)  # hparams.yaml; no summary since default_hp_metric=False
            shown = one_column_each(hparams, HPARAM_FIRST) if list(varied) == list(HPARAM_FIRST) else hparams
            outcome = logger.outcome_columns if own else []
            writer = logger.experiment.file_writer  # SummaryWriter's public FileWriter, as add_hparams uses it
            writer.add_summary(experiment_summary({**shown, **dict.fromkeys(outcome, "")}, varied, metrics))
            if outcome:  # TensorBoard keeps a run's first row: the row waits for the outcome, from hparams.yaml
                logger.save()  # writes hparams.yaml now, whenever and however the run ends
            else:
                writer.add_summary(summary_v2.hparams_pb(shown, trial_id="", start_time_secs=time.time()))
            writer.flush()


class RunRecord(Callback):
    """Print the site -> norm table, and write it and the HParams summary into the run folder, once data is ready.

    It acts in ``setup``, after ``prepare_data`` and the data module's own ``setup``, so a run that
    fails on missing data shows only its error and leaves no record that looks like a started run.
    """

    def __init__(self, hparams: dict[str, object], placement_table: str | None) -> None:
        self.hparams = hparams
        self.placement_table = placement_table

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        if self.placement_table and trainer.is_global_zero:
            print(self.placement_table)
        if not trainer.is_global_zero or log_dir is None or trainer.fast_dev_run:
            return  # no run folder to record into (fast_dev_run logs nothing)
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        if self.placement_table:
            (log_dir / "placement.txt").write_text(self.placement_table + "\n")
        log_hparams_to_tensorboard(trainer, self.hparams)
        print(f"run folder: {log_dir}\nTensorBoard: tensorboard --logdir {log_dir.parent}", file=sys.stderr)
