"""Samplers and pruners by name: Optuna's own classes, or any class given by its import path."""

from __future__ import annotations

import importlib
import inspect

import optuna

from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.definition.study_file import Pruner, Sampler

SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "grid": optuna.samplers.GridSampler}
PRUNERS = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "none": optuna.pruners.NopPruner}


def _resolve(kind: str, name: str, named: dict, base: type) -> type:
    """A class from ``named`` or from a ``module.Class`` path, or a ConfigError listing the choices."""
    if name in named:
        return named[name]
    example = "optuna.samplers.QMCSampler" if kind == "sampler" else "optuna.pruners.PercentilePruner"
    module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr) if module else None
    except (ImportError, AttributeError):
        cls = None
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise ConfigError(f"unknown {kind} '{name}'; valid: {', '.join(named)}, or an Optuna {kind} "
                          f"class path such as {example}")
    return cls


def _build(kind: str, cls: type, kwargs: dict):
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{kind} {cls.__name__} refused its arguments {kwargs}: {err}") from None


def check_sampler(spec: Sampler, space: SearchSpace) -> None:
    """Raise now, before any trial, if the sampler cannot be built for this space."""
    make_sampler(spec, space, seed_offset=0)


def make_sampler(spec: Sampler, space: SearchSpace, seed_offset: int) -> optuna.samplers.BaseSampler:
    """Build the sampler; ``seed_offset`` makes each worker and each resumed run draw new values.

    A seeded sampler restarted on a resumed study would replay its first random draws and repeat
    configurations already run; shifting the seed by the number of existing trials avoids that
    while a fresh study stays reproducible. The grid keeps one seed: its order must agree
    across workers (Optuna's advice for distributed grid search).
    """
    cls = _resolve("sampler", spec.name, SAMPLERS, optuna.samplers.BaseSampler)
    kwargs = dict(spec.kwargs)
    if cls is optuna.samplers.GridSampler:
        kwargs.setdefault("search_space", space.grid())
    accepts_seed = "seed" in inspect.signature(cls).parameters
    if accepts_seed and spec.seed is not None:
        offset = 0 if cls is optuna.samplers.GridSampler else seed_offset
        kwargs.setdefault("seed", spec.seed + offset)
    return _build("sampler", cls, kwargs)


def make_pruner(spec: Pruner) -> optuna.pruners.BasePruner:
    """Build the pruner (also inside each trial process, which asks it whether to stop)."""
    cls = _resolve("pruner", spec.name, PRUNERS, optuna.pruners.BasePruner)
    return _build("pruner", cls, dict(spec.kwargs))
