"""Runs through LightningCLI: the ``DytLabCLI`` class, and building a run without running it.

Everything about a run is a LightningCLI argument, so YAML configs, ``--print_config`` and several
``--config`` files compose as Lightning users expect. ``DytLabCLI`` adds only what LightningCLI
leaves to each project, through its public hooks: linked arguments, dyt_lab's callbacks, the
default run folder, resume by ``--ckpt_path last``, the site -> norm table and the HParams record.

    run_lightning(["fit", "--config", "configs/quickstart.yaml"])   # what ``dyt-lab fit`` does
    model, datamodule, trainer = load_run(["--config", "configs/quickstart.yaml"])   # probes
    BuildCLI(args, parser=earlier.parser)   # the study check: every searched value built as fit builds it
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from dyt_lab.data import ImageDataModule
from dyt_lab.errors import (
    EXIT_INTERRUPTED,
    ConfigError,
    check_int,
    check_writable,
    expected_failure,
    stop_on_ctrl_c,
)
from dyt_lab.models.external import NAME_IT, net_build_failure
from dyt_lab.models.resnet import resolve_recipe
from dyt_lab.parse_errors import check_config_files, condensed, flag_values, unknown_hint
from dyt_lab.training import ImageClassifier
from dyt_lab.training.callbacks import DivergenceStop, LearningRateLog, RunOutcome
from dyt_lab.training.checkpoints import (
    AtomicCheckpointIO,
    check_fits,
    conflicting_hyperparameters,
    evaluation_folder,
    find_last_checkpoint,
    read_checkpoint,
    run_config_of,
)
from dyt_lab.training.records import RunRecord, run_hparams


class NoLitLoggerTip(logging.Filter):
    """Drop Lightning's tip to install litlogger, which it logs for every Trainer without a LitLogger.

    A run here logs to TensorBoard on purpose; the tip is one more line before every fit and every trial.
    Lightning (2.6) has no setting for it (pytorch-lightning issue #21294 asks for one), so the public
    handle is Python's logging: a filter on the logger it writes to drops that one line and nothing else.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


# The logger Lightning's rank_zero_info writes to (lightning/pytorch/utilities/rank_zero.py).
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(NoLitLoggerTip())
# seed_everything's "Seed set to 0", which LightningCLI logs before it builds anything, so before every
# config error; the seed is in the run's config.yaml and its HParams row. Lightning's documented way to
# quiet its console lines is the level of the Python logger that writes them.
logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)

# The LightningCLI parser's --help, reached by options before the command (dyt-lab --help is dyt_lab.cli's)
DESCRIPTION = "dyt-lab fit | validate | test | predict: LightningCLI's commands (dyt-lab --help lists all commands)"
TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
    },
}
# dyt_lab's own callbacks, configurable as --checkpoint.*, --last_checkpoint.*, ... (see instantiate_trainer)
OWN_CALLBACKS = {"checkpoint": ModelCheckpoint, "last_checkpoint": ModelCheckpoint,
                 "divergence": DivergenceStop, "lr_monitor": LearningRateLog}
# Lightning warnings that ask nothing of the user: ImageClassifier's batch transfer is meant to win
# over the data module's; the pytree one is Lightning's own deprecation; and dyt_lab passes its
# argv to LightningCLI on purpose (DDP's launcher re-runs the unchanged sys.argv, which maps to it again).
QUIET_WARNINGS = (r".*overridden `transfer_batch_to_device`", r".*isinstance\(treespec, LeafSpec\)",
                  r"LightningCLI's args parameter")


class OneLineParser(LightningArgumentParser):
    """LightningCLI's parser, whose refusals are one ConfigError line instead of usage and a nested tree.

    ``--help`` still prints the usage; ``DYT_LAB_DEBUG=1`` shows jsonargparse's own message.
    """

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("DYT_LAB_DEBUG"):  # a nested parse, or debugging
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        dests = [dest for dest in parser.get_defaults().keys() if dest != "config"]  # each argument's dotted key
        keys = sorted({dest.split(".")[0] for dest in dests})
        flags = [f"--{dest}" for dest in dests] + ["--config", "--print_config", "--help"]
        line = condensed(message) + unknown_hint(message, keys, flags)
        if line.startswith("--model.net.") and "does not correspond to a subclass" in line:  # timm's ResNet block
            line += f"; {NAME_IT}"
        raise ConfigError(line) from None


class DytLabCLI(LightningCLI):
    """LightningCLI with dyt_lab's links, callbacks, defaults, resume, run records and one-line errors."""

    def __init__(self, model_class=ImageClassifier, datamodule_class=ImageDataModule,
                 outcome: RunOutcome | None = None, **kwargs) -> None:
        """LightningCLI's arguments, with dyt_lab's defaults for those not given.

        ``outcome`` (a RunOutcome callback) is told how ``fit`` ended, for its caller to read.
        """
        self.outcome = outcome or RunOutcome()
        self._checkpoints: dict[str, dict] = {}  # path -> checkpoint, read once here until the model is checked
        defaults = {"subclass_mode_model": True, "subclass_mode_data": True, "trainer_defaults": TRAINER_DEFAULTS,
                    "seed_everything_default": 0, "parser_class": OneLineParser}
        super().__init__(model_class, datamodule_class, **{**defaults, **kwargs})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in ("num_classes", "in_channels", "image_size"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        # Plain class groups, not add_lightning_class_args: instantiate_trainer decides which of them
        # a run gets. Two checkpoints: the best by val/acc, and last.ckpt rewritten after every
        # validation (ModelCheckpoint's save_last only rewrites it when a new best is saved, so
        # `--ckpt_path last` would resume from the best epoch rather than the latest).
        for key, callback in OWN_CALLBACKS.items():
            parser.add_class_arguments(callback, key, fail_untyped=False, sub_configs=True)
        # val/acc_best picks its epoch on the images it scores; the held-out test split is the honest number.
        parser.add_argument("--test_after_fit", type=bool, default=False,
                            help="fit: after training, test the best checkpoint (by val/acc) on the test split")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc",
            "checkpoint.mode": "max",
            "checkpoint.filename": "best-epoch{epoch:03d}-acc{val/acc:.4f}",
            "checkpoint.auto_insert_metric_name": False,
            "last_checkpoint.filename": "last",
            "last_checkpoint.enable_version_counter": False,
        })

    def _own(self, config: Namespace) -> Namespace:
        """The part of ``config`` for this subcommand (the whole of it with ``run=False``)."""
        return config[self.subcommand] if self.subcommand else config

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:  # an injected --model.net class that raised: one line, not jsonargparse's dump
            model = self._own(self.config).get("model")
            net = model.as_dict().get("init_args", {}).get("net") if isinstance(model, Namespace) else None
            refused = None if expected_failure(err) else net_build_failure(net, err)
            if refused is None:
                raise
            raise refused from err

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The trainer, with the user's callbacks first, then dyt_lab's that fit its settings, and atomic saves.

        Settings only Lightning checks (an accelerator, a negative max_epochs) are refused here, in
        one line, before any run folder exists.
        """
        init = self._own(self.config_init)
        trainer = {**init.get("trainer", {}), **kwargs}
        ours = [init[key] for key in OWN_CALLBACKS] + [self.outcome]
        if trainer.get("enable_checkpointing") is False:  # the user turned checkpoints off: drop ours
            ours = [cb for cb in ours if not isinstance(cb, ModelCheckpoint)]
        if trainer.get("logger") in (False, None):  # no logger: no learning rate to log
            ours = [cb for cb in ours if not isinstance(cb, LearningRateLog)]
        given = trainer.get("callbacks") or []
        chosen = [*(given if isinstance(given, list) else [given]), *ours]
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(cb, ProgressBar) for cb in chosen):
            # Rich's default redraws 100 times a second from a thread that competes with training
            # for a small CPU; 4 redraws a second read the same and cost nothing measurable.
            chosen.append(RichProgressBar(refresh_rate=4))
        if trainer.get("accumulate_grad_batches") is not None:  # Lightning divides by it without a check
            check_int("--trainer.accumulate_grad_batches", trainer["accumulate_grad_batches"])
        plugins = trainer.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins = [*plugins, AtomicCheckpointIO()]
        try:
            return super().instantiate_trainer(**{**kwargs, "callbacks": chosen, "plugins": plugins})
        except (ValueError, TypeError, MisconfigurationException) as err:  # Lightning's checks of trainer flags
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"--trainer: {first}") from err  # DYT_LAB_DEBUG=1 shows Lightning's traceback

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # What the user's config and flags say the model is, before LightningCLI replaces it with
        # the hyperparameters saved in --ckpt_path: the two are compared in before_instantiate_classes.
        own = self.config[self.config["subcommand"]] if self.config.get("subcommand") else self.config
        model = own.get("model")  # self.subcommand is set only after parsing
        self._model_given = model.clone() if isinstance(model, Namespace) else model
        ckpt_path = own.get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():  # a corrupt file: one line, before LightningCLI reads it
            self._checkpoint(ckpt_path)

    def _checkpoint(self, path: str) -> dict:
        """The checkpoint at ``path``, read once (one ConfigError line if it cannot be)."""
        if path not in self._checkpoints:
            self._checkpoints[path] = read_checkpoint(path)
        return self._checkpoints[path]

    def _refuse_conflicting_checkpoint(self, config: Namespace, ckpt_path: str) -> None:
        """A run is what its config says: a checkpoint trained as another model is an error naming both."""
        given = self._model_given
        if not isinstance(given, Namespace):
            return
        conflicts = conflicting_hyperparameters(given.as_dict(), self._checkpoint(ckpt_path))
        if conflicts:
            more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
            raise ConfigError(f"--ckpt_path '{ckpt_path}' was trained with other model arguments than this run's "
                              f"config: {'; '.join(conflicts[:3])}{more}; drop those flags to continue that run, "
                              "or leave out --ckpt_path to start a new one")
        config.model = given  # the same values: keep the config's own form, not LightningCLI's merge

    def before_instantiate_classes(self) -> None:
        config = self._own(self.config)
        ckpt_path = config.get("ckpt_path")
        logger = config.trainer.get("logger")
        save_dir = logger.init_args.get("save_dir") if isinstance(logger, Namespace) else None
        for model in (config.get("model"), self._model_given):  # config.yaml shows what a recipe set, as values
            if isinstance(model, Namespace) and "recipe" in (model.get("init_args") or {}):
                given = model.init_args.as_dict()
                for key, value in resolve_recipe(given).items():
                    if value != given[key]:
                        model.init_args[key] = value
        if self.subcommand == "fit" and save_dir and "://" not in str(save_dir):  # remote: its library says
            check_writable(Path(save_dir), "save_dir", "give another --trainer.logger.init_args.save_dir")
        if self.subcommand != "fit" and save_dir and "://" not in str(save_dir):  # a pass is not a training run
            logger.init_args.save_dir, logger.init_args.name = evaluation_folder(
                self.subcommand, ckpt_path, save_dir, logger.init_args.name)
            logger.init_args.version = None
        if ckpt_path == "last" and self.subcommand == "fit":
            given = self._model_given.as_dict() if isinstance(self._model_given, Namespace) else None
            found = find_last_checkpoint(logger.init_args.save_dir, logger.init_args.name, given)
            if found is None:
                print(f"no last.ckpt under {logger.init_args.save_dir}/{logger.init_args.name}: "
                      "starting from scratch", file=sys.stderr)
                config.ckpt_path = None
            else:  # continue in the same run folder, so its logs and checkpoints stay together
                config.ckpt_path, logger.init_args.version = str(found[0]), found[1]
        elif ckpt_path not in (None, "last", "best", "hpc", "registry") and not Path(ckpt_path).is_file():
            missing = "does not exist" if not Path(ckpt_path).exists() else "is not a file"
            raise ConfigError(f"--ckpt_path '{ckpt_path}' {missing}; give a .ckpt file or 'last'")
        if config.get("ckpt_path") and Path(config.ckpt_path).is_file():
            self._refuse_conflicting_checkpoint(config, config.ckpt_path)

    def _check_checkpoint(self) -> None:
        """A checkpoint made with another model is one clear line, not a load_state_dict traceback."""
        ckpt_path = self._own(self.config).get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            check_fits(self.model, self._checkpoint(ckpt_path), ckpt_path)
        self._checkpoints.clear()  # Lightning reads it again to restore: do not hold a second copy

    def before_validate(self) -> None:
        self._check_checkpoint()

    def before_test(self) -> None:
        self._check_checkpoint()

    def before_predict(self) -> None:
        self._check_checkpoint()

    def before_fit(self) -> None:
        self._check_checkpoint()
        self.outcome.watch_folder(self.trainer)
        table = self.model.placement_table()  # dyt_lab's models and any other network, converted or not
        # The instantiated modules' hparams hold the linked values (num_classes, ...), the config does not;
        # the config names their classes.
        config = self._own(self.config).clone().as_dict()
        for key, hparams in (("model", self.model.hparams), ("data", getattr(self.datamodule, "hparams", {}))):
            config[key] = {"class_path": (config.get(key) or {}).get("class_path"), "init_args": dict(hparams)}
        self.trainer.callbacks.append(RunRecord(run_hparams(config), table))

    def _test_best(self) -> None:
        """Test the best checkpoint by val/acc (the last weights if there is none) on the test split."""
        best = next((cb.best_model_path for cb in self.trainer.checkpoint_callbacks
                     if getattr(cb, "monitor", None) == "val/acc" and cb.best_model_path), None)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)

    def after_fit(self) -> None:
        best = self.trainer.callback_metrics.get("val/acc_best")  # read before a test pass replaces them
        if self._own(self.config).get("test_after_fit") and not self.trainer.interrupted:
            self._test_best()
        logger = self.trainer.logger
        if not self.trainer.is_global_zero or logger is None or logger.log_dir is None:
            return
        if best is not None:
            score = f"val/acc_best {float(best):.4f}"
            if "test/acc" in self.trainer.callback_metrics:
                score += f", test/acc {float(self.trainer.callback_metrics['test/acc']):.4f} (best checkpoint)"
        elif self.trainer.current_epoch >= (self.trainer.max_epochs or 0) > 0:
            score = "nothing to train (max_epochs already reached; raise --trainer.max_epochs to go on)"
        else:
            score = "no validation metric"
        epochs = self.trainer.current_epoch
        print(f"\nDone: {score} after {epochs} epoch{'s' if epochs != 1 else ''}.\n"
              f"Run folder:  {logger.log_dir}  (config.yaml, placement.txt, checkpoints/)\n"
              f"TensorBoard: tensorboard --logdir {logger.save_dir}   then open http://localhost:6006",
              file=sys.stderr)


class BuildCLI(DytLabCLI):
    """DytLabCLI that builds what ``fit`` would build (``run=False``): no subcommand, no run folder.

    ``parser``: an earlier BuildCLI's parser, built with the same arguments, to parse with again.
    """

    def __init__(self, args: list[str] | None = None, parser: LightningArgumentParser | None = None,
                 **kwargs) -> None:
        self._reused_parser = parser
        super().__init__(args=args, run=False, save_config_callback=None, **kwargs)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict, subparser_kwargs: dict) -> None:
        # Building the parser is a third of a build: a check that builds many runs (dyt-lab study) builds it once
        if self._reused_parser is None:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        else:
            self.parser = self._reused_parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        # fit's own arguments (ckpt_path, weights_only) are keys of a run's saved config.yaml
        parser.add_method_arguments(self.trainer_class, "fit", skip=set(self.subcommands()["fit"]))

    def before_instantiate_classes(self) -> None:  # nothing to resume: no run is started
        pass


class LoadedRun(NamedTuple):
    """A run's model, data module and trainer, built as ``fit`` builds them and not run."""

    model: LightningModule
    datamodule: LightningDataModule
    trainer: Trainer


def quiet_warnings() -> None:
    """Silence the Lightning warnings in ``QUIET_WARNINGS``."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def load_run(args: list[str]) -> LoadedRun:
    """Build a run's model, data and trainer from fit's flags without the subcommand; run nothing.

    ``args`` look like ``["--config", "x.yaml", "--model.norm", "dyt"]``; a run's saved
    config.yaml is accepted as is. Probes and benchmarks rebuild a run's objects with it.
    """
    quiet_warnings()
    cli = BuildCLI(args)
    return LoadedRun(cli.model, cli.datamodule, cli.trainer)


def with_run_config(argv: list[str]) -> list[str]:
    """Let ``validate|test|predict --ckpt_path X`` reuse the config.yaml saved in X's run folder.

    LightningCLI can rebuild the model from a checkpoint's hyperparameters, but only after its
    parser has accepted a model; the run's own config supplies the model and the data, and any
    flag the user adds still overrides it.
    """
    if not argv or argv[0] not in ("validate", "test", "predict"):
        return argv
    if any(a.startswith(("--config", "--model")) for a in argv):
        return argv
    ckpts = flag_values(argv, "--ckpt_path")
    if not ckpts:
        return argv
    ckpt = ckpts[-1]
    return [argv[0], "--config", str(run_config_of(ckpt, "the run's --config or --model")), *argv[1:]]


def run_lightning(argv: list[str] | None = None) -> DytLabCLI:
    """Run a LightningCLI subcommand (fit, validate, test, predict) on ``argv`` (None: sys.argv); return the CLI.

    A run stopped by Ctrl-C says how to resume and exits 130; a run that failed before its first
    step leaves no run folder behind.
    """
    stop_on_ctrl_c()  # a study's warm trial runs this without the CLI's entry point
    quiet_warnings()
    # sys.argv stays as typed: DDP's launcher re-runs it, and each rank maps it to the same args here.
    args = with_run_config(list(sys.argv[1:] if argv is None else argv))
    check_config_files(args)
    outcome = RunOutcome()
    try:
        return DytLabCLI(args=args, outcome=outcome, save_config_kwargs={"overwrite": True},
                         parser_kwargs={"description": DESCRIPTION})
    except MisconfigurationException as err:  # Lightning's own name for a user's setting it cannot work with
        raise ConfigError(str(err).strip().splitlines()[0]) from err
    except SystemExit as stop:
        if outcome.interrupted:  # Lightning caught Ctrl-C, saved nothing new, and exits 1
            # without a last.ckpt of its own, --ckpt_path last would pick up an older run's or start over
            print("interrupted: continue this run with the same command plus --ckpt_path last "
                  "(it resumes from the newest last.ckpt)" if outcome.resumable else
                  "interrupted before its first checkpoint: nothing to resume; run the same command to start "
                  "again", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None
        raise stop
    finally:
        if outcome.discard is not None:  # failed before training: nothing in it is worth keeping
            shutil.rmtree(outcome.discard, ignore_errors=True)
