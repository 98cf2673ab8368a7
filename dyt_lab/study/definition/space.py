"""The search space: study-file entries -> Optuna distributions, and stored values -> a ``Configuration``.

Optuna stores categorical choices as str/int/float/bool/None only, while a config value may be a
list (a set of placement presets) or a mapping (a norm spec with options). Such a choice is stored
under a readable label (``stage1+stage2``, or compact JSON) and mapped back to its value here, by
the space that labelled it: the worker's, or the report's, rebuilt from the study's saved study.yaml.
A sampled value has one form past this module: a ``Configuration``, which gives the trial's flags and
its folder's label.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.study_file import SPEC_FILE, Distribution

SCALARS = (str, int, float, bool, type(None))


def choice_label(value: Any) -> str | int | float | bool | None:
    """How a categorical choice is stored in Optuna: itself if a scalar, else a readable label."""
    if isinstance(value, SCALARS):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and "+" not in v for v in value):
        return "+".join(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def config_flag(key: str, value: Any) -> str:
    """A LightningCLI flag setting ``key`` to ``value``: strings as typed, anything else as JSON."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"--{key}={text}"


def _shown(value: Any) -> str:
    """A config value, short: floats to 3 digits, a mapping as ``k=v,k=v`` (keys sorted), a list as ``a+b``."""
    if isinstance(value, dict):
        return ",".join(f"{k}={_shown(value[k])}" for k in sorted(value))
    if isinstance(value, list):
        return "+".join(_shown(v) for v in value)
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Configuration:
    """One sampled configuration: searched key -> config value (decoded), in the search space's order.

    Args:
        values: key -> the value the trial's fit runs with (a list or mapping as written in the study file).
        varied: the keys whose distribution has more than one value: what tells two trials apart.
    """

    values: dict[str, Any]
    varied: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        """The LightningCLI flags that set these values."""
        return [config_flag(key, value) for key, value in self.values.items()]

    def label(self) -> str:
        """The varied values, short and safe in a file name: ``alpha_init=0.483-lr=0.002-norm=dyt``.

        Keys sorted and shortened to their last part where that is unambiguous.
        """
        keys = sorted(k for k in self.varied if k in self.values)
        short = [key.rsplit(".", 1)[-1] for key in keys]
        parts = [f"{s if short.count(s) == 1 else key}={_shown(self.values[key])}" for key, s in zip(keys, short)]
        return re.sub(r"[^A-Za-z0-9_.,+=-]", "_", "-".join(parts))


def _number(key: str, name: str, value: Any, integer: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"search_space '{key}': {name} must be a finite number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"search_space '{key}': an int distribution needs an integer {name}, got {value!r}")
        return int(value)
    return float(value)


def to_distribution(key: str, entry: Distribution | list) -> tuple[BaseDistribution, dict]:
    """One study-file entry -> (Optuna distribution, label -> value map for categoricals)."""
    if isinstance(entry, list):
        entry = Distribution(type="categorical", choices=entry)
    if entry.factorial is not None:
        if entry.choices or not entry.factorial or not all(isinstance(v, list) and v for v in entry.factorial.values()):
            raise ConfigError(f"search_space '{key}': factorial maps each option to a non-empty list of levels, "
                              "e.g. {stem: [batchnorm, dyt]}, and takes no choices")
        options = list(entry.factorial)  # the written order: for placement rules, the first match wins
        entry = Distribution(type="categorical", choices=[dict(zip(options, combo)) for combo in
                                                          itertools.product(*entry.factorial.values())])
    if entry.type == "categorical":
        if not entry.choices:
            raise ConfigError(f"search_space '{key}': a categorical needs at least one choice, got none")
        values = {}
        for value in entry.choices:
            label = choice_label(value)
            if label in values:
                raise ConfigError(f"search_space '{key}': choice {value!r} is listed twice")
            values[label] = value
        return CategoricalDistribution(list(values)), values
    integer = entry.type == "int"
    for name in ("low", "high"):
        if getattr(entry, name) is None:
            raise ConfigError(f"search_space '{key}': a {entry.type} distribution needs '{name}'")
    low = _number(key, "low", entry.low, integer)
    high = _number(key, "high", entry.high, integer)
    step = None if entry.step is None else _number(key, "step", entry.step, integer)
    if low > high:
        raise ConfigError(f"search_space '{key}': low {low} is greater than high {high}")
    if entry.log and low <= 0:
        raise ConfigError(f"search_space '{key}': log scale needs low > 0, got low={low}")
    if entry.log and step is not None:
        raise ConfigError(f"search_space '{key}': log scale and step cannot be combined")
    if step is not None and step <= 0:
        raise ConfigError(f"search_space '{key}': step must be > 0, got {step}")
    if integer:
        return IntDistribution(low, high, log=entry.log, step=step or 1), {}
    return FloatDistribution(low, high, log=entry.log, step=step), {}


class SearchSpace:
    """The study's searched keys: sample them in a trial, list them for a grid or for validation."""

    def __init__(self, entries: dict[str, Distribution | list]) -> None:
        self.distributions: dict[str, BaseDistribution] = {}
        self._choices: dict[str, dict] = {}
        for key, entry in entries.items():
            if not isinstance(key, str) or not key or key.startswith("-"):
                raise ConfigError(f"search_space key {key!r} must be a dotted config key like model.norm")
            self.distributions[key], self._choices[key] = to_distribution(key, entry)

    def __iter__(self):
        return iter(self.distributions)

    def suggest(self, trial) -> Configuration:
        """Sample every key in ``trial`` (Optuna records the params) and return the configuration it runs."""
        params = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                params[key] = trial.suggest_categorical(key, dist.choices)
            elif isinstance(dist, IntDistribution):
                params[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
            else:
                params[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
        return self.configuration(params)

    def configuration(self, params: dict[str, Any]) -> Configuration:
        """Optuna params (labels for categoricals) -> the configuration they stand for.

        A label the space does not list (a trial of an earlier, edited search space) stays as stored.
        """
        values = {key: self._choices.get(key, {}).get(value, value) for key, value in params.items()}
        varied = tuple(key for key, dist in self.distributions.items() if not dist.single())
        return Configuration(values, varied)

    def choices(self, key: str) -> list[Any]:
        """A categorical key's config values, in the order of its choices."""
        return list(self._choices[key].values())

    def grid(self) -> dict[str, list]:
        """Every key's values for GridSampler; numbers need a step (or use categorical choices)."""
        grid = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif dist.step is None or dist.log:
                raise ConfigError(f"sampler grid: search_space '{key}' needs choices or a step, "
                                  "a continuous range has no grid")
            elif isinstance(dist, IntDistribution):
                grid[key] = list(range(dist.low, dist.high + 1, dist.step))
            else:
                count = int(round((dist.high - dist.low) / dist.step)) + 1
                grid[key] = [round(dist.low + i * dist.step, 12) for i in range(count)]
        return grid

    def probes(self) -> dict[str, list[tuple[Any, Any]]]:
        """Key -> (label, config value) pairs worth checking before a study: low and high, or every choice."""
        probes = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                probes[key] = list(self._choices[key].items())
            else:
                probes[key] = [(dist.low, dist.low), (dist.high, dist.high)]
        return probes


def saved_space(folder: Path) -> SearchSpace:
    """The search space of the study in ``folder``, rebuilt from its saved study.yaml.

    Only the search space is read: the report needs no base config file, so it runs where they are not.
    """
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the report reads the study's search space from it")
    entries = (yaml.safe_load(path.read_text()) or {}).get("search_space") or {}
    return SearchSpace({key: entry if isinstance(entry, list) else Distribution(**entry) for key, entry in entries.items()})
