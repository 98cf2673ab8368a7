"""A study as an experimental design: which factors it varies, at which levels, and its named cells.

A searched key is one factor (``model.optimizer.lr``), except a key whose choices are mappings,
such as norm specs ``{name: factored, center: batch, scale: alpha, squash: tanh}``: each option of
the mapping is a factor of its own (``center``, ``scale``, ``squash``), so a study that lists the
cells of a factorial as norm specs is analysed as that factorial. The ``reference`` and
``gap_from`` of a study file name cells by these factors.
"""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial

from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.space import SCALARS, SearchSpace, choice_label


def factor_levels(values: dict[str, Any]) -> dict[str, Any]:
    """One configuration's config values -> factor -> level (a mapping gives one factor per option)."""
    levels: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            for option, level in value.items():
                levels[f"{key}.{option}" if option in values else option] = _scalar(level)
        else:
            levels[key] = _scalar(value)
    return levels


def _scalar(value: Any) -> Any:
    return value if isinstance(value, SCALARS) else choice_label(value)


def trial_levels(trial: FrozenTrial, space: SearchSpace) -> dict[str, Any]:
    """A trial's factor levels, its stored labels decoded by the search space that labelled them."""
    return factor_levels(space.configuration(trial.params).values)


def design_cells(space: SearchSpace) -> list[dict[str, Any]]:
    """Every combination of the categorical keys' choices, as factor levels (numbers ranges are not cells)."""
    keys = [k for k, d in space.distributions.items() if isinstance(d, CategoricalDistribution)]
    choices = [space.choices(k) for k in keys]
    return [factor_levels(dict(zip(keys, combo))) for combo in itertools.product(*choices)]


def varying_factors(cells: list[dict[str, Any]] | pd.DataFrame) -> list[str]:
    """The factors that take more than one level (a norm's constant ``name`` is not a factor)."""
    table = cells if isinstance(cells, pd.DataFrame) else pd.DataFrame(cells)
    # map(str), not astype(str): pandas' string dtype keeps a missing level (an option set to null) as NaN,
    # which nunique would not count, so a null-or-0.2 factor would look constant
    return [c for c in table.columns if table[c].map(str).nunique() > 1]


def check_cell(what: str, cell: dict[str, Any], cells: list[dict[str, Any]]) -> None:
    """Raise a one-line ConfigError unless ``cell`` names factors of the design and matches some of its cells."""
    factors = varying_factors(cells)
    for factor, level in cell.items():
        if factor not in factors:
            raise ConfigError(f"{what}: '{factor}' is not a factor of this design; factors: {', '.join(factors)}")
        levels = sorted({str(c.get(factor)) for c in cells})
        if str(_scalar(level)) not in levels:
            raise ConfigError(f"{what}: {factor}={level!r} is not a level of the design; levels: {', '.join(levels)}")
    if not any(all(str(c.get(f)) == str(_scalar(v)) for f, v in cell.items()) for c in cells):
        shown = ", ".join(f"{f}={v}" for f, v in cell.items())
        raise ConfigError(f"{what}: no configuration of the design has {shown}; add it to the search_space")


def check_design(space: SearchSpace, spec) -> None:
    """Check the study's ``reference`` and ``gap_from`` against its design before any trial runs."""
    if spec.gap_from is not None and spec.reference is None:
        raise ConfigError("gap_from needs a reference: the gap is measured from gap_from to reference")
    cells = design_cells(space)
    for what in ("reference", "gap_from"):
        cell = getattr(spec, what)
        if cell is not None:
            if not isinstance(cell, dict) or not cell:
                raise ConfigError(f"{what} must map factors to levels, e.g. {{scale: batch_std}}; got {cell!r}")
            check_cell(what, cell, cells)
