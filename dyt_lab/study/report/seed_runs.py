"""A seeded study's trials as the table the statistics take (one row per completed seed run), its reference
cell, and each configuration paired with that reference seed by seed."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from dyt_lab.study.attributes import LAST_METRICS, RUN_DIR, SEED, TEST_METRICS
from dyt_lab.study.definition.design import trial_levels
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.report.known_points import name_of
from dyt_lab.study.report.statistics import ALPHA, paired_by_seed, text_of

EXTRA = {"val/acc": "val/acc (last)", "train/loss_epoch": "train loss (last)"}  # last-epoch metrics shown
TEST = "test/acc"  # the best checkpoint on the held-out split (``--test_after_fit``, on in every trial)
NOT_FACTORS = ["seed", "value", "trial", "run_dir", *EXTRA.values(), TEST]


def metric_bounds(metric: str) -> tuple[float, float] | None:
    """The range an interval must stay in: [0, 1] for an accuracy, none otherwise."""
    return (0.0, 1.0) if "acc" in metric else None


def seed_run_table(study: optuna.Study, space: SearchSpace) -> pd.DataFrame:
    """One row per completed seed run: its factor levels (decoded by ``space``), seed, objective value and
    last-epoch metrics."""
    rows, factors = [], set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        last = trial.user_attrs.get(LAST_METRICS) or {}
        levels = trial_levels(trial, space)
        factors.update(levels)
        rows.append({**levels, "seed": trial.user_attrs.get(SEED, 0), "value": trial.value,
                     **{label: last.get(metric) for metric, label in EXTRA.items()},
                     TEST: (trial.user_attrs.get(TEST_METRICS) or {}).get(TEST), "trial": trial.number,
                     "run_dir": trial.user_attrs.get(RUN_DIR)})
    # a level a configuration does not set (LayerNorm has no alpha_init) is "-", not NaN, so it groups
    return pd.DataFrame(rows).fillna({k: "-" for k in factors})


def one_configuration(table: pd.DataFrame) -> str:
    """The label of a study's only configuration: its familiar name and the levels it sets (``BatchNorm
    (center=batch, ...)``, ``model.norm=batchnorm``), or the base config where the study searched no key."""
    first = table.iloc[0]
    levels = {c: first[c] for c in table.columns if c not in NOT_FACTORS and str(first[c]) != "-"}
    # a searched float (a sampled lr) to 4 digits: a label, not a record (seed_runs.csv keeps the value)
    known = name_of(levels)
    text = text_of({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in levels.items()})
    return f"{known} ({text})" if known else text or "the study's base config"


def as_cell(levels: dict | None) -> dict | None:
    """A reference or gap_from cell as the seed-run table shows it: a null level (an option left off) is "-"."""
    return None if levels is None else {k: "-" if v is None else v for k, v in levels.items()}


def reference_in(table: pd.DataFrame, factors: list[str], reference: dict | None) -> dict | None:
    """``reference`` as a cell of this table (its levels of ``factors``), or None where the table has none.

    A confirmation keeps its parent's reference, which may name factors the confirmation does not vary:
    such a factor must sit at the reference's level in every run, and some configuration must match.
    """
    if not reference:
        return None
    for factor, level in reference.items():
        if factor not in factors and factor in table.columns and set(table[factor].map(str)) != {str(level)}:
            return None
    kept = {k: v for k, v in reference.items() if k in factors}
    rows = table[factors].astype(str)
    if not kept or not (rows[list(kept)] == [str(v) for v in kept.values()]).all(axis=1).any():
        return None
    return kept


def reference_cells(text: pd.DataFrame, factors: list[str], reference: dict) -> list[tuple[dict, dict]]:
    """Each configuration of ``text`` (levels as text) that is not a reference cell, with its reference cell.

    With one reference cell (a confirm study: the reference at its best), every configuration is compared
    to it. With several (BatchNorm at each lr), a configuration's reference cell agrees with it on every
    other factor both set (the same lr; BatchNorm sets no alpha_init, "-") and shares the most levels;
    configurations with no such single cell are left out, rather than compared across learning rates.
    """
    configs = text[factors].drop_duplicates().to_dict("records")
    candidates = [c for c in configs if all(c[k] == str(v) for k, v in reference.items())]
    if not candidates:
        valid = [text_of(c) for c in configs]
        more = f" (and {len(valid) - 4} more)" if len(valid) > 4 else ""
        raise ValueError(f"reference {text_of(reference)} is not a configuration of the table; "
                         f"valid ones: {'; '.join(valid[:4])}{more}")
    others = [f for f in factors if f not in reference]
    matched = []
    for config in configs:
        if config in candidates:
            continue
        agree = candidates if len(candidates) == 1 else [
            c for c in candidates if all(c[f] == config[f] for f in others if "-" not in (c[f], config[f]))]
        shared = [sum(c[f] == config[f] for f in others) for c in agree]
        if shared and shared.count(max(shared)) == 1:  # else no reference cell, or no single closest one
            matched.append((config, agree[shared.index(max(shared))]))
    return matched


def differences_to(table: pd.DataFrame, factors: list[str], reference: dict, higher_is_better: bool,
                   margin: float, value: str = "value", alpha: float = ALPHA) -> pd.DataFrame:
    """Each configuration minus its reference cell (``reference_cells``), paired by seed, as one Holm family:
    the configuration's levels (as text), its label, and ``statistics.paired_by_seed``'s columns."""
    text = table.assign(**{f: table[f].astype(str) for f in factors})
    runs = lambda cell: text[(text[factors] == [cell[f] for f in factors]).all(axis=1)].set_index("seed")[value]  # noqa: E731
    matched = reference_cells(text, factors, reference)
    out = paired_by_seed({text_of(config): (runs(config), runs(cell)) for config, cell in matched}, margin,
                         higher_is_better, alpha)
    return pd.concat([pd.DataFrame([config for config, _ in matched], columns=factors), out], axis=1)
