"""Before the first trial: check the base configs and every sampled key with dyt-lab's own parser.

Each key is parsed at representative values (low and high, every categorical choice) and the run is
instantiated at each of them, so a typo, a value of the wrong type, or a placement preset that
matches no site of this model costs seconds now rather than a night of failed trials.
"""

from __future__ import annotations

import difflib
import os

from dyt_lab.errors import ConfigError
from dyt_lab.study.objective import base_args, study_args
from dyt_lab.study.space import SearchSpace, config_flag
from dyt_lab.study.spec import StudySpec, one_line


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


def _parse(parser, args: list[str], what: str):
    try:
        return parser.parse_args(args)
    except (Exception, SystemExit) as err:  # ArgumentError; SystemExit if a parser insists on exiting
        raise ConfigError(f"{what} is refused by the dyt-lab fit parser: {one_line(err)}") from None


def _instantiate(parser, cfg, what: str, prepare_data: bool = False) -> None:
    from dyt_lab.errors import cause_of_type as _cause_of_type

    try:
        init = parser.instantiate(cfg)
        if prepare_data:  # missing data fails here once, not in every trial; a download happens once
            init.data.prepare_data()
    except Exception as err:
        cause = _cause_of_type(err, (ConfigError,))
        raise ConfigError(f"{what}: {cause if cause else one_line(err)}") from None


def check_devices(trainer, gpus: int, workers: int, what: str) -> None:
    """Refuse a trial that would wait forever for GPUs its worker does not have."""
    accelerator, devices = str(trainer.accelerator), trainer.devices
    if accelerator == "cpu" or (accelerator == "auto" and gpus == 0):
        return
    if gpus == 0:
        raise ConfigError(f"{what}: trainer.accelerator={accelerator} but no GPU is visible here; "
                          "use --base.overrides.trainer.accelerator=cpu or a machine with GPUs")
    per_worker = max(1, gpus // workers)
    wanted = len(devices) if isinstance(devices, (list, tuple)) else devices
    wanted = int(wanted) if str(wanted).lstrip("-").isdigit() else -1  # "auto", -1: all it has
    if wanted > per_worker:
        raise ConfigError(f"{what}: trainer.devices={devices} asks for {wanted} GPUs but each of the "
                          f"{workers} workers has {per_worker} ({gpus} visible); lower --workers or trainer.devices")


def runs_ddp(trainer) -> bool:
    """Whether a parsed trainer config starts several processes (several devices or nodes)."""
    devices = trainer.devices
    count = len(devices) if isinstance(devices, (list, tuple)) else devices
    several = str(count).lstrip("-").isdigit() and (int(count) > 1 or int(count) == -1)
    return several or int(trainer.num_nodes or 1) > 1 or "ddp" in str(trainer.strategy)


def validate(spec: StudySpec, space: SearchSpace, gpus: int) -> bool:
    """Raise a one-line ConfigError unless every trial this study can draw parses and builds.

    Returns whether some trial runs DDP (so it must start as a fresh process).
    """
    from dyt_lab.runs import fit_parser as make_parser

    parser = make_parser()
    parser.exit_on_error = False
    base = base_args(spec) + study_args(spec, 0)
    cfg = _parse(parser, base, "the base config")
    known = config_keys(cfg.as_dict())
    for key in space:
        if key not in known:
            shorts = sorted(k for k in known if "init_args" not in k)
            close = difflib.get_close_matches(key, shorts, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"search_space key '{key}' is not a key of the base config{hint}; "
                              f"keys look like model.norm, model.optimizer.lr, data.batch_size")
    check_devices(cfg.trainer, gpus, spec.workers, "the base config")
    _instantiate(parser, cfg, "the base config", prepare_data=True)
    ddp = runs_ddp(cfg.trainer)
    for key, probes in space.probes().items():
        for label, value in probes:
            what = f"search_space '{key}' = {label!r}"
            probe = _parse(parser, base + [config_flag(key, value)], what)
            _instantiate(parser, probe, what)
            check_devices(probe.trainer, gpus, spec.workers, what)
            ddp = ddp or runs_ddp(probe.trainer)
    return ddp
