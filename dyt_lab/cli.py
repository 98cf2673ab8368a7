"""The ``dyt-lab`` command: LightningCLI's fit/validate/test/predict, plus study, probe and norms.

Everything about a run is a LightningCLI argument, so YAML configs, ``--print_config`` and
several ``--config`` files compose as Lightning users expect. This file adds only what
LightningCLI leaves to each project: which arguments are linked, the default run folder, resume
by ``--ckpt_path last``, the site -> norm table, real hyperparameters in TensorBoard's HParams
tab, and one clear line (not a traceback) for a user mistake.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from dyt_lab.errors import ConfigError

USAGE_EXTRA = """\
dyt_lab commands besides LightningCLI's fit | validate | test | predict:
  dyt-lab study run|resume|report ...   Optuna studies over configs (dyt-lab study --help)
  dyt-lab probe ...                     norm diagnostics for a config or checkpoint (dyt-lab probe --help)
  dyt-lab norms                         the norm registry: names, formulas, layouts
"""
# What the HParams tab shows: the model and data arguments and the trainer settings that change results.
HPARAM_KEYS = ("model.", "data.", "seed_everything", "trainer.max_epochs", "trainer.max_steps",
               "trainer.precision", "trainer.devices", "trainer.num_nodes", "trainer.accumulate_grad_batches",
               "trainer.gradient_clip_val")
EXIT_CONFIG_ERROR = 2
EXIT_DIVERGED = 3


def norms_table() -> str:
    """The registry as a Markdown table: name, formula, parameters, options, supported layouts."""
    from dyt_lab.norms import NORMS

    rows = ["| name | formula | parameters | options | layouts |", "|---|---|---|---|---|"]
    for entry in NORMS.values():
        name = entry.name + (f" ({', '.join(entry.aliases)})" if entry.aliases else "")
        options = ", ".join(entry.options()) or "-"
        rows.append(f"| `{name}` | `{entry.formula}` | {entry.params} | {options} | {', '.join(entry.layouts)} |")
    return "\n".join(rows)


def _flat_hparams(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested config -> ``{"model.norm": "dyt", ...}`` of TensorBoard-friendly scalar values."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        if key in ("init_args", "dict_kwargs"):
            flat.update(_flat_hparams(value, prefix))
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:  # lists, None: shown as text so the HParams tab can still filter on them
            flat[name] = str(value)
    return flat


def _build_cli_class():
    """Import Lightning lazily (it takes seconds) and define the CLI class."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
    from lightning.pytorch.cli import LightningCLI

    from dyt_lab.data import ImageDataModule
    from dyt_lab.models import format_placement
    from dyt_lab.training import ImageClassifier
    from dyt_lab.training.callbacks import DivergenceStop
    from dyt_lab.training.runs import RunRecord, find_last_checkpoint, read_matching_checkpoint

    class DytLabCLI(LightningCLI):
        """LightningCLI with dyt_lab's links, defaults, resume and run records."""

        def add_arguments_to_parser(self, parser) -> None:
            for name in ("num_classes", "in_channels", "image_size"):
                parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
            # Two checkpoints: the best by val/acc, and last.ckpt rewritten after every validation.
            # (ModelCheckpoint's own save_last only rewrites last.ckpt when a new best is saved, so
            # `--ckpt_path last` would resume from the best epoch rather than the latest.)
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
            parser.set_defaults({
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch:03d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
            })
            parser.add_lightning_class_args(DivergenceStop, "divergence")
            parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")

        def _instantiate_trainer(self, config, callbacks):
            if config.get("enable_checkpointing") is False:  # the user turned checkpoints off: drop ours
                callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
            if config.get("logger") in (False, None):  # no logger: no learning rate to log
                callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
            chosen = [*(config.get("callbacks") or []), *callbacks]
            if config.get("enable_progress_bar") is not False and not any(isinstance(cb, ProgressBar) for cb in chosen):
                # Rich's default redraws 100 times a second from a thread that competes with training
                # for a small CPU; 4 redraws a second read the same and cost nothing measurable.
                callbacks = [*callbacks, RichProgressBar(refresh_rate=4)]
            return super()._instantiate_trainer(config, callbacks)

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
            ckpt_path = config.get("ckpt_path")
            if ckpt_path == "last" and self.subcommand == "fit":
                logger = config.trainer.logger
                found = find_last_checkpoint(logger.init_args.save_dir, logger.init_args.name)
                if found is None:
                    print(f"no last.ckpt under {logger.init_args.save_dir}/{logger.init_args.name}: "
                          "starting from scratch", file=sys.stderr)
                    config.ckpt_path = None
                else:  # continue in the same run folder, so its logs and checkpoints stay together
                    config.ckpt_path, logger.init_args.version = str(found[0]), found[1]
            elif ckpt_path not in (None, "last", "best", "hpc", "registry") and not Path(ckpt_path).is_file():
                raise ConfigError(f"--ckpt_path '{ckpt_path}' is not a file; give a .ckpt path or 'last'")

        def _check_checkpoint(self) -> None:
            """A checkpoint made with another model is one clear line, not a load_state_dict traceback."""
            ckpt_path = self.config[self.subcommand].get("ckpt_path")
            if ckpt_path and Path(ckpt_path).is_file():
                read_matching_checkpoint(self.model, ckpt_path)

        def before_validate(self) -> None:
            self._check_checkpoint()

        def before_test(self) -> None:
            self._check_checkpoint()

        def before_predict(self) -> None:
            self._check_checkpoint()

        def before_fit(self) -> None:
            self._check_checkpoint()
            net = getattr(self.model, "net", None)
            table = format_placement(net) if hasattr(net, "norm_sites") else None
            if table and self.trainer.is_global_zero:
                print(table)
            # The instantiated modules' hparams hold the linked values (num_classes, ...), the config does not.
            config = self.config[self.subcommand].clone().as_dict()
            config.update(model=dict(self.model.hparams), data=dict(getattr(self.datamodule, "hparams", {})))
            hparams = {k: v for k, v in _flat_hparams(config).items() if k.startswith(HPARAM_KEYS)}
            self.trainer.callbacks.append(RunRecord(hparams, table))

        def after_fit(self) -> None:
            logger = self.trainer.logger
            if not self.trainer.is_global_zero or logger is None or logger.log_dir is None:
                return
            best = self.trainer.callback_metrics.get("val/acc_best")
            if best is not None:
                score = f"val/acc_best {float(best):.4f}"
            elif self.trainer.current_epoch >= (self.trainer.max_epochs or 0) > 0:
                score = "nothing to train (max_epochs already reached; raise --trainer.max_epochs to go on)"
            else:
                score = "no validation metric"
            print(f"\nDone: {score} after {self.trainer.current_epoch} epochs.\n"
                  f"Run folder:  {logger.log_dir}  (config.yaml, placement.txt, checkpoints/)\n"
                  f"TensorBoard: tensorboard --logdir {logger.save_dir}   then open http://localhost:6006",
                  file=sys.stderr)

    return DytLabCLI, ImageClassifier, ImageDataModule


TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
    },
}


def _with_run_config(argv: list[str]) -> list[str]:
    """Let ``validate|test|predict --ckpt_path X`` reuse the config.yaml saved in X's run folder.

    LightningCLI can rebuild the model from a checkpoint's hyperparameters, but only after its
    parser has accepted a model; the run's own config supplies the model and the data, and any
    flag the user adds still overrides it.
    """
    if not argv or argv[0] not in ("validate", "test", "predict"):
        return argv
    if any(a.startswith(("--config", "--model")) for a in argv):
        return argv
    ckpt = next((a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")), None)
    if ckpt is None and "--ckpt_path" in argv[:-1]:
        ckpt = argv[argv.index("--ckpt_path") + 1]
    if ckpt is None:
        return argv
    config = Path(ckpt).parent.parent / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"no config.yaml next to checkpoint '{ckpt}' (looked for {config}); "
                          "pass the run's --config or --model")
    return [argv[0], "--config", str(config), *argv[1:]]


# Lightning warnings that fire on every run and ask nothing of the user: ImageClassifier's batch
# transfer is meant to win over the data module's, and the pytree one is Lightning's own deprecation.
QUIET_WARNINGS = (r".*overridden `transfer_batch_to_device`", r".*isinstance\(treespec, LeafSpec\)")


def run_lightning(argv: list[str] | None = None):
    """Run a LightningCLI subcommand (fit, validate, test, predict) on ``argv`` (None: sys.argv); return the CLI."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    DytLabCLI, ImageClassifier, ImageDataModule = _build_cli_class()
    if argv is None:  # from the shell: rewrite sys.argv itself, which DDP's launcher re-runs
        sys.argv[1:] = _with_run_config(sys.argv[1:])
    else:
        argv = _with_run_config(list(argv))
    return DytLabCLI(
        ImageClassifier,
        ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=argv,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"epilog": USAGE_EXTRA},
    )


def _offline_cli_class():
    """DytLabCLI for building what ``fit`` would build, with no subcommand and no run folder."""
    DytLabCLI, ImageClassifier, ImageDataModule = _build_cli_class()

    class OfflineCLI(DytLabCLI):
        def add_arguments_to_parser(self, parser) -> None:
            super().add_arguments_to_parser(parser)
            # fit's own arguments (ckpt_path, weights_only) are keys of a run's saved config.yaml
            parser.add_method_arguments(self.trainer_class, "fit", skip=set(self.subcommands()["fit"]))

        def before_instantiate_classes(self) -> None:  # nothing to resume: no run is started
            pass

    return OfflineCLI, ImageClassifier, ImageDataModule


def load_cli(args: list[str]):
    """Parse and instantiate a run's model, data and trainer without running it (``run=False``).

    ``args`` are fit's flags without the subcommand (``["--config", "x.yaml", "--model.norm", "dyt"]``;
    a run's saved config.yaml is accepted as is). The result has ``.parser``, ``.config``,
    ``.model``, ``.datamodule`` and ``.trainer``: probes rebuild a run's model with it.
    """
    OfflineCLI, ImageClassifier, ImageDataModule = _offline_cli_class()
    with warnings.catch_warnings():  # args are a command's own flags, not a mix-up with sys.argv
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return OfflineCLI(ImageClassifier, ImageDataModule, subclass_mode_model=True, subclass_mode_data=True,
                          args=args, run=False, trainer_defaults=TRAINER_DEFAULTS, seed_everything_default=0,
                          save_config_callback=None)


def make_parser():
    """The parser ``dyt-lab fit`` uses (arguments, links, defaults), built without parsing or running.

    For validators such as ``dyt-lab study``. LightningCLI builds its parser inside ``__init__``,
    so a subclass stops right after that step.
    """
    OfflineCLI, ImageClassifier, ImageDataModule = _offline_cli_class()

    class ParserBuilt(Exception):
        pass

    class ParserOnly(OfflineCLI):
        def parse_arguments(self, parser, args) -> None:
            raise ParserBuilt(parser)

    try:
        ParserOnly(ImageClassifier, ImageDataModule, subclass_mode_model=True, subclass_mode_data=True,
                   trainer_defaults=TRAINER_DEFAULTS, seed_everything_default=0, run=False)
    except ParserBuilt as built:
        return built.args[0]
    raise RuntimeError("LightningCLI did not parse arguments")  # unreachable unless Lightning changes


def _cause_of_type(err: BaseException, types: tuple[type, ...]) -> BaseException | None:
    """The first exception of ``types`` in ``err``'s chain: jsonargparse wraps errors raised in __init__."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, types):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Entry point of ``dyt-lab`` and ``python -m dyt_lab``."""
    argv = list(sys.argv[1:] if args is None else args)
    command = argv[0] if argv else None
    try:
        if command == "norms":
            print(norms_table())
        elif command == "study":
            from dyt_lab.study.cli import main as study_main

            study_main(argv[1:])
        elif command == "probe":
            from dyt_lab.diagnostics.probe import main as probe_main

            probe_main(argv[1:])
        else:
            run_lightning(args)  # None: LightningCLI reads sys.argv itself
    except Exception as err:
        from dyt_lab.training.callbacks import DivergenceError

        cause = _cause_of_type(err, (ConfigError, DivergenceError))
        if cause is None or os.environ.get("DYT_LAB_DEBUG"):
            raise
        # A user mistake or a diverged run is an expected outcome: one line, a non-zero exit code.
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR if isinstance(cause, ConfigError) else EXIT_DIVERGED) from None
