"""Before the first trial: build the base config and every sampled key as ``dyt-lab fit`` builds them.

Each key is set to representative values (low and high, every categorical choice) and the run is
built at each of them through ``BuildCLI``, Trainer included, so a typo, a value of the wrong type,
a placement preset that matches no site of this model, or a trainer setting Lightning refuses costs
seconds now rather than a night of failed trials. The built Trainers also say whether trials run DDP.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from argparse import ArgumentError
from contextlib import contextmanager

from dyt_lab.errors import ConfigError, cause_of_type
from dyt_lab.study.definition.space import SearchSpace, config_flag
from dyt_lab.study.definition.study_file import TRIALS, StudySpec, one_line
from dyt_lab.study.engine.objective import base_args, study_args


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_gpus(gpus: list[str], workers: int, index: int) -> list[str]:
    """Worker ``index``'s share: GPUs dealt round-robin, or one shared GPU when workers outnumber them."""
    if not gpus:
        return []
    return gpus[index::workers] if workers <= len(gpus) else [gpus[index % len(gpus)]]


def config_keys(config: dict, prefix: str = "") -> set[str]:
    """Every dotted key of a parsed config, also in the short form without ``init_args``."""
    keys = set()
    for key, value in config.items():
        name = f"{prefix}{key}"
        keys.update({name, name.replace("init_args.", "")})
        if isinstance(value, dict):
            keys |= config_keys(value, f"{name}.")
    return keys


# No seeding: building a run draws no seed, and seed_everything would set PL_GLOBAL_SEED in this
# process's environment, which worker and trial processes inherit (a trial with seed_everything: true
# would then take 0 instead of a fresh seed). Last, so it wins over the base configs' value.
NO_SEED = "--seed_everything=false"


@contextmanager
def _quiet():
    """Hide Lightning's notes and warnings about each Trainer built here: once per value, they say nothing."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def build(args: list[str], what: str, parser=None):
    """What ``dyt-lab fit`` builds from ``args``: model, data and Trainer (with its checks); or one ConfigError.

    ``parser``: the parser of an earlier build, to parse with again.
    """
    from dyt_lab.runs import BuildCLI

    try:
        with _quiet():
            # exit_on_error=False: the parser raises ArgumentError, which tells its refusals from the build's.
            # No load_from_checkpoint support: it dumps the whole config into the model, twice, and the
            # dump is a third of a build's time; nothing built here is saved.
            return BuildCLI([*args, NO_SEED], parser=parser, parser_kwargs={"exit_on_error": False},
                            load_from_checkpoint_support=False)
    except (ArgumentError, SystemExit) as err:  # SystemExit: a parser that insists on exiting
        raise ConfigError(f"{what} is refused by the dyt-lab fit parser: {one_line(err)}") from None
    except Exception as err:
        cause = cause_of_type(err, (ConfigError,))
        raise ConfigError(f"{what}: {cause if cause else one_line(err)}") from None


def check_devices(cli, gpus: int, workers: int, what: str) -> None:
    """Refuse a trial that asks for more GPUs than its worker gets.

    The Trainer was built here, where every visible GPU counts; a worker of several sees only its share.
    """
    # Imported here: the runner imports Lightning while its fork server starts, not before
    from lightning.pytorch.accelerators import CPUAccelerator

    trainer = cli.trainer
    if gpus == 0 or workers == 1 or isinstance(trainer.accelerator, CPUAccelerator):
        return
    per_worker = max(1, gpus // workers)
    asked = cli.config.trainer.devices
    if trainer.num_devices > per_worker and str(asked) not in ("auto", "-1"):  # these two take the share
        raise ConfigError(f"{what}: trainer.devices={asked} asks for {trainer.num_devices} GPUs but each of the "
                          f"{workers} workers has {per_worker} ({gpus} visible); lower --workers or trainer.devices")


def runs_ddp(trainer) -> bool:
    """Whether a built Trainer starts processes of its own: DDP over several devices or nodes, a spawn strategy."""
    return trainer.strategy.launcher is not None


def check_trials(spec: StudySpec, space: SearchSpace, gpus: int) -> bool:
    """Raise a one-line ConfigError unless every trial this study can draw builds as ``dyt-lab fit`` builds it.

    Returns whether some trial runs DDP (so it must start as a fresh process).
    """
    base = base_args(spec) + study_args(spec, spec.folder / TRIALS / "check")  # built, never written
    run = build(base, "the base config")
    known = config_keys(run.config.as_dict())
    for key in space:
        if key not in known:
            shorts = sorted(k for k in known if "init_args" not in k)
            close = difflib.get_close_matches(key, shorts, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"search_space key '{key}' is not a key of the base config{hint}; "
                              f"keys look like model.norm, model.optimizer.lr, data.batch_size")
    try:  # missing data fails here once, not in every trial; a download happens once
        run.datamodule.prepare_data()
    except Exception as err:
        cause = cause_of_type(err, (ConfigError,))
        raise ConfigError(f"the base config: {cause if cause else one_line(err)}") from None
    check_devices(run, gpus, spec.workers, "the base config")
    ddp = runs_ddp(run.trainer)
    for key, probes in space.probes().items():
        for label, value in probes:
            what = f"search_space '{key}' = {label!r}"
            probe = build(base + [config_flag(key, value)], what, parser=run.parser)
            check_devices(probe, gpus, spec.workers, what)
            ddp = ddp or runs_ddp(probe.trainer)
    return ddp
