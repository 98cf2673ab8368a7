"""The study file: which configs to start from, what to search, how to judge a trial, where to store it.

It is parsed by jsonargparse from dataclasses, as LightningCLI parses run configs, so every key has
a ``--key`` flag and ``--help`` text, and several ``--config`` files compose. A study file::

    study_name: resnet_bn_replacement          # default: the study file's name
    base:
      configs: [configs/experiments/resnet_bn_vs_dyt_digits.yaml]
      overrides: {trainer.max_epochs: 6}        # fixed dotted keys, after the configs
    search_space:
      model.norm: [dyt, derf]                   # a list: categorical
      model.alpha_init: {type: float, low: 0.05, high: 5, log: true}
    objective: {metric: val/acc, direction: maximize, value: best}
    sampler: {name: tpe, seed: 0}
    pruner: {name: median}
    n_trials: 20
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from dyt_lab.config_keys import flatten
from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.margin import DEFAULT_MARGIN, check_margin

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SPEC_FILE = "study.yaml"  # the resolved study file, in the study folder: what `study resume` and the report re-read
TRIALS = "trials"  # the study folder's folder of trial runs: TensorBoard's logdir for the study
CONFIRM_SUFFIX = ".confirm"  # NAME.confirm: the study `dyt-lab study confirm NAME` runs, beside NAME


def confirmation_name(name: str, tag: str | None = None) -> str:
    """The study ``dyt-lab study confirm NAME [--tag TAG]`` runs: ``NAME.confirm`` or ``NAME.confirm.TAG``."""
    return f"{name}{CONFIRM_SUFFIX}" + (f".{tag}" if tag else "")


class Overrides(dict):
    """The type of ``base.overrides``: a mapping kept as written, so a ``class_path`` in it stays data."""


class Choices(list):
    """The type of a categorical's choices: a list kept as written, so a ``class_path`` choice stays data."""


def _refuse(expected: str):
    def refuse(value: object):
        raise ValueError(f"expected {expected}, got {value!r}")
    return refuse


def register_data_types() -> None:
    """Make jsonargparse keep ``base.overrides`` and the search space's choices as plain data.

    Under ``dict[str, Any]`` or ``list[Any]`` it turns every ``{class_path: ...}`` value into a namespace
    with the class's defaults filled in (and ``instantiate`` builds it): such a value could not be written
    to a trial's flags, and its defaults would replace the base config's arguments, which a config file's
    would not.
    """
    from jsonargparse.typing import register_type

    register_type(Overrides, serializer=dict, deserializer=_refuse("a mapping of config keys to values"),
                  type_check=lambda value, _: isinstance(value, dict))
    register_type(Choices, serializer=list, deserializer=_refuse("a list of choices"),
                  type_check=lambda value, _: isinstance(value, list))


@dataclass
class Base:
    """The ``dyt-lab fit`` configuration every trial starts from.

    Args:
        configs: LightningCLI config files, composed in order as several ``--config`` flags.
        overrides: fixed ``dotted.key: value`` settings applied after the configs; nested
            mappings are flattened to dotted keys, except those with a ``class_path``. On the
            command line, each ``--base.overrides.KEY=VALUE`` adds or replaces one key.
    """

    configs: list[str] = field(default_factory=list)
    overrides: Overrides = field(default_factory=dict)


@dataclass
class Distribution:
    """One searched config key; a plain list in the study file is shorthand for categorical choices.

    Args:
        type: float, int or categorical.
        low: smallest value (float, int).
        high: largest value (float, int).
        log: sample on a log scale (float, int; needs low > 0).
        step: spacing of the values (float, int; not with log). Needed by the grid sampler for numbers.
        choices: the values of a categorical; a value may be a list or a mapping (e.g. a placement list).
        factorial: a two-or-more-level factorial written as option -> levels, e.g. ``{stem: [batchnorm, dyt],
            stage1: [batchnorm, dyt]}``: a categorical whose choices are every combination as a mapping
            (in the order written), so each option is a factor of the design.
    """

    type: Literal["float", "int", "categorical"] = "float"
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: Choices | None = None
    factorial: dict[str, Choices] | None = None


@dataclass
class Objective:
    """What a trial is judged by.

    Args:
        metric: a metric the run logs each validation epoch, e.g. val/acc or val/loss.
        direction: maximize or minimize.
        value: which value counts: the best epoch's, or the last epoch's.
    """

    metric: str = "val/acc"
    direction: Literal["maximize", "minimize"] = "maximize"
    value: Literal["best", "last"] = "best"


@dataclass
class Sampler:
    """How trials choose their values.

    Args:
        name: tpe, random, grid, or any Optuna sampler by class path (optuna.samplers.QMCSampler).
        seed: random seed (each worker and each resumed run derive their own from it).
        kwargs: more keyword arguments for the sampler's constructor.
    """

    name: str = "tpe"
    seed: int | None = 0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pruner:
    """When a running trial is stopped early, judged each validation epoch.

    Args:
        name: median, hyperband, none, or any Optuna pruner by class path.
        kwargs: keyword arguments for the pruner's constructor (e.g. n_warmup_steps).
    """

    name: str = "median"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Arm:
    """One arm of a study tuned arm by arm: what it fixes and what it searches besides the shared keys.

    Args:
        configs: fit config files of this arm, after ``base.configs`` (a norm spec replaced whole, say).
        overrides: fixed dotted keys of this arm, applied after ``base.overrides``.
        search_space: keys only this arm searches (a DyT arm's alpha0), besides the study's ``search_space``.
    """

    configs: list[str] = field(default_factory=list)
    overrides: Overrides = field(default_factory=dict)
    search_space: dict[str, Distribution | Choices] = field(default_factory=dict)


@dataclass
class StudySpec:
    """An Optuna study in which every trial is one ``dyt-lab fit`` run.

    Args:
        base: the configs every trial starts from.
        search_space: dotted config key -> distribution (or a list of categorical choices).
        objective: the metric a trial is judged by.
        sampler: the Optuna sampler.
        pruner: the Optuna pruner.
        n_trials: trials in the whole study, over all runs and workers (a resumed run tops up to it).
        timeout: stop starting trials after this many seconds of this run (None: no limit).
        study_name: the study's name and folder under root (None: the study file's name).
        storage: sqlite (study.db in the study folder), journal (journal.log there, for several
            processes on one machine or NFS), a journal file path, or a database URL
            (postgresql://..., for several machines).
        root: folder holding one folder per study.
        workers: processes running trials at once on this machine; with GPUs each gets its own.
        trial_timeout: kill a trial after this many seconds and record it failed (None: no limit).
        heartbeat_interval: seconds between a running trial's heartbeats.
        grace_period: seconds without a heartbeat after which a running trial counts as dead.
        max_retries: how many times the configuration of a killed or interrupted trial is retried.
        seeds: run every configuration once per seed (``seed_everything``), the same seeds for
            every configuration so comparisons are paired; n_trials then counts configurations,
            and a configuration's value is the mean over its seeds (None: one run each).
        reference: the configuration every other is compared to in the report (paired differences
            over the seeds), as search_space key (or a norm option such as ``scale``) -> value;
            keys it leaves out are matched level by level (None: no comparison).
        gap_from: a second configuration, in the same form; the report splits the gap between it
            and ``reference`` into the share each differing factor explains (None: no attribution).
        margin: equivalence margin of the report's verdicts, in the objective's units (0.005: half a
            point of accuracy): a difference whose interval lies within +-margin is ``equivalent``.
        isolation: how a trial starts: ``warm`` forks it from a process that imported torch and
            Lightning once (about 1 s instead of 10), ``process`` starts a fresh Python (DDP trials
            always do).
        arms: arms tuned alike (None: one study). Each arm name -> its fixed keys and own searched keys;
            each arm runs as study NAME.ARM with the shared search_space plus its own, and the same
            n_trials, sampler, pruner and seeds, so every arm gets the same budget (Melis et al. 2018;
            Dodge et al. 2019). ``dyt-lab study report NAME`` then compares the arms at their bests.
    """

    base: Base = field(default_factory=Base)
    search_space: dict[str, Distribution | Choices] = field(default_factory=dict)
    objective: Objective = field(default_factory=Objective)
    sampler: Sampler = field(default_factory=Sampler)
    pruner: Pruner = field(default_factory=Pruner)
    n_trials: int = 20
    timeout: float | None = None
    study_name: str | None = None
    storage: str = "sqlite"
    root: str = "studies"
    workers: int = 1
    trial_timeout: float | None = None
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retries: int = 3
    seeds: list[int] | None = None
    reference: dict[str, Any] | None = None
    gap_from: dict[str, Any] | None = None
    margin: float = DEFAULT_MARGIN
    isolation: Literal["warm", "process"] = "warm"
    arms: dict[str, Arm] | None = None

    @property
    def folder(self) -> Path:
        """The study folder: storage (by default), trial runs, report."""
        return Path(self.root) / str(self.study_name)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for the resolved ``study.yaml`` and the trial processes."""
        return asdict(self)


def one_line(err: BaseException) -> str:
    """jsonargparse's multi-line message on one line: the key, the value, what is valid."""
    from dyt_lab.parse_errors import condensed

    return condensed(str(err)) or type(err).__name__


def spec_parser(prog: str = "dyt-lab study run"):
    """The study file parser: ``--config`` plus a flag for every StudySpec key."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    register_data_types()
    parser = ArgumentParser(prog=prog, exit_on_error=False, description=StudySpec.__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a study YAML file (repeatable)")
    parser.add_class_arguments(StudySpec, fail_untyped=True, sub_configs=True)
    return parser


def pop_override_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Take ``--base.overrides.KEY=VALUE`` (or ``... KEY VALUE``) flags out of argv, as KEY -> VALUE.

    jsonargparse would nest ``trainer.max_epochs`` under ``trainer`` and let a second flag for
    ``trainer.*`` replace the first; taken out here, each flag sets exactly its dotted key, and
    the value stays text for the fit parser to read.
    """
    prefix, rest, overrides = "--base.overrides.", [], {}
    args = iter(argv)
    for arg in args:
        if not arg.startswith(prefix):
            rest.append(arg)
        elif "=" in arg:
            key, value = arg[len(prefix):].split("=", 1)
            overrides[key] = value
        else:
            overrides[arg[len(prefix):]] = next(args, "")
    return rest, overrides


def load_spec(argv: list[str], prog: str = "dyt-lab study run") -> StudySpec:
    """Parse study files and flags into a checked StudySpec, or raise a one-line ConfigError."""
    from jsonargparse import ArgumentError

    from dyt_lab.parse_errors import check_config_files, config_key_hint, unknown_hint

    parser = spec_parser(prog)
    argv, extra_overrides = pop_override_flags(argv)
    check_config_files(argv, what="study file")
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as err:
        keys = [key for key in parser.get_defaults().keys() if key != "config"]
        hint = config_key_hint(str(err), keys) or unknown_hint(str(err), keys, [f"--{key}" for key in keys])
        raise ConfigError(f"study file: {one_line(err)}{hint}") from None
    spec = spec_from_namespace(parser, cfg)
    # as dotted keys, so a --base.overrides.KEY flag adds or replaces one key, not the file's whole mapping
    spec.base.overrides = {**flatten(spec.base.overrides, whole_classes=True), **extra_overrides}
    return spec


def spec_from_namespace(parser, cfg) -> StudySpec:
    """Turn a parsed namespace into a checked StudySpec, naming the study after its file if unnamed."""
    config_files = cfg.get("config") or []
    values = parser.instantiate(cfg).as_dict()
    values.pop("config", None)
    values["base"] = Base(**values["base"]) if isinstance(values["base"], dict) else values["base"]
    if values.get("arms"):
        values["arms"] = {name: arm if isinstance(arm, Arm) else Arm(**arm) for name, arm in values["arms"].items()}
    spec = StudySpec(**{k: v for k, v in values.items() if k in StudySpec.__dataclass_fields__})
    if spec.study_name is None:
        if not config_files:
            raise ConfigError("no study_name: give --study_name NAME or a study file with --config")
        spec.study_name = Path(str(config_files[-1])).stem
    check_spec(spec)
    return spec


def check_spec(spec: StudySpec) -> None:
    """Refuse values no study can run with, one line each (the search space is checked in space.py)."""
    if not NAME_PATTERN.fullmatch(spec.study_name):
        raise ConfigError(f"study_name '{spec.study_name}' must be letters, digits, '_', '-' or '.'")
    if not spec.base.configs:
        raise ConfigError("base.configs is empty: name at least one dyt-lab fit config file")
    for path in spec.base.configs:
        if not Path(path).is_file():
            raise ConfigError(f"base config '{path}' is not a file")
    if not spec.search_space:
        raise ConfigError("search_space is empty: map at least one config key to a distribution")
    for name in ("n_trials", "workers", "heartbeat_interval", "grace_period"):
        if getattr(spec, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(spec, name)}")
    if spec.grace_period <= spec.heartbeat_interval:
        raise ConfigError(f"grace_period ({spec.grace_period}) must exceed heartbeat_interval "
                          f"({spec.heartbeat_interval})")
    try:
        spec.margin = check_margin(spec.margin)
    except ValueError as err:
        raise ConfigError(f"margin: {err}") from None
    if spec.max_retries < 0:
        raise ConfigError(f"max_retries must be >= 0, got {spec.max_retries}")
    if spec.seeds is not None:
        if not spec.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in spec.seeds):
            raise ConfigError(f"seeds must be a non-empty list of integers, got {spec.seeds!r}")
        if len(set(spec.seeds)) != len(spec.seeds):
            raise ConfigError(f"seeds lists a seed twice: {spec.seeds}")
        if "seed_everything" in spec.search_space:
            raise ConfigError("seeds and a search_space key seed_everything both set the seed: keep one")


def arm_specs(spec: StudySpec) -> list[StudySpec]:
    """The studies of a study tuned arm by arm, NAME.ARM each, alike in all but their arm's keys.

    An arm may not search a shared key: its budget over the shared keys would then differ from the others'.
    """
    from dataclasses import replace

    specs = []
    for name, arm in (spec.arms or {}).items():
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"arms: arm name '{name}' must be letters, digits, '_', '-' or '.'")
        if shared := sorted(set(arm.search_space) & set(spec.search_space)):
            raise ConfigError(f"arms.{name}.search_space repeats the shared key(s) {shared}: every arm searches "
                              "those alike; give the arm only its own keys")
        overrides = {**spec.base.overrides, **flatten(arm.overrides, whole_classes=True)}
        specs.append(replace(spec, study_name=f"{spec.study_name}.{name}", arms=None,
                             base=Base(configs=[*spec.base.configs, *arm.configs], overrides=overrides),
                             search_space={**spec.search_space, **arm.search_space}))
    return specs
