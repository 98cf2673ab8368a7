"""Familiar names (BatchNorm, DyT, ...) for the points of the factored norm's (center, scale, squash) space,
so the report's rows, plots and gap corners read as what they are rather than as three option values.

The option values and the names are the norm registry's (``choices_of``, ``named_points``): nothing in the
report spells them."""

from __future__ import annotations

import functools

import pandas as pd

from dyt_lab.study.report.statistics import text_of

NORM = "factored"  # the norm whose points the report names: its options and named points come from the registry


@functools.cache
def _registry() -> tuple[tuple[str, ...], dict[tuple[str, ...], str]]:
    """The factored norm's options (in the order a point lists them) and its named points, from the norm registry:
    the one place that spells their values. Imported when first needed: the registry brings torch, which the
    report's other tables never need."""
    from dyt_lab.norms.registry import choices_of, named_points

    return tuple(choices_of(NORM)), named_points(NORM)


def options() -> tuple[str, ...]:
    """The options that place a point of the factored norm: ``("center", "scale", "squash")``."""
    return _registry()[0]


def name_of(levels: dict) -> str:
    """A cell's familiar name (BatchNorm, DyT, ...) if it is a named point of the factored norm.

    Without a center, a std scale divides by the root mean square around 0, not by a standard deviation: the
    registry names those points "RMS"."""
    return _registry()[1].get(tuple(str(levels.get(k)) for k in options()), "")


def fixed_options(table: pd.DataFrame, factors: list[str]) -> dict:
    """The factored norm's options a table holds at one level (not among ``factors``), each at that level."""
    return {c: table[c].iloc[0] for c in options() if c in table and c not in factors}


def familiar_names(table: pd.DataFrame, factors: list[str]) -> dict[str, str]:
    """The configurations that are known points (BatchNorm, DyT) by their label (``text_of`` their levels)."""
    fixed = fixed_options(table, factors)
    cells = [{**fixed, **r} for r in table[factors].drop_duplicates().to_dict("records")]
    return {text_of({f: c[f] for f in factors}): name_of(c) for c in cells if name_of(c)}


def corner_name(levels: dict, role: str) -> str:
    """A corner's familiar name (DyT), 'all dyt' where every factor sits at one level (a placement), else its role."""
    values = {str(v) for v in levels.values()}
    return name_of(levels) or (f"all {values.pop()}" if len(values) == 1 and len(levels) > 1 else role)
