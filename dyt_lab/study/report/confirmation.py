"""A confirmation (``dyt-lab study confirm``) in its search's report: the chosen configurations rerun on fresh
seeds, each against the reference, paired by seed (``seed_runs.differences_to``) and, where the runs saved their
predictions, by test image too (``per_image.crossed_family``). ``engine/sequential.py`` decides its looks on
``confirmation_verdicts``."""

from __future__ import annotations

import optuna
import pandas as pd

from dyt_lab.errors import ConfigError
from dyt_lab.study.attributes import CONFIRMS, DESIGN
from dyt_lab.study.definition.design import varying_factors
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.report.markdown import frame_table, interval, p_value, verdict_text
from dyt_lab.study.report.per_image import crossed_family, planning_text, points, points_interval
from dyt_lab.study.report.seed_runs import (
    NOT_FACTORS,
    TEST,
    as_cell,
    differences_to,
    metric_bounds,
    reference_in,
    seed_run_table,
)
from dyt_lab.study.report.statistics import ALPHA, summarize


def confirmed_section(confirm_study: optuna.Study, space: SearchSpace, search: pd.DataFrame, margin: float,
                      metric: str) -> list[str]:
    """The confirm study's configurations: search-stage estimate beside the fresh-seed one, and the paired
    test-split difference to the reference on the fresh seeds (one Holm family). ``space``: the search's,
    which the confirm study keeps."""
    info = confirm_study.user_attrs.get(CONFIRMS, {})
    fresh, factors, reference = confirmation_design(confirm_study, space, search)
    if fresh.empty:
        return ["## Confirmed on fresh seeds", f"Study {confirm_study.study_name}: no completed run yet."]
    use_test = fresh[TEST].notna().all()
    value = TEST if use_test else "value"
    confirmed = summarize(fresh, factors, value=value, bounds=metric_bounds(metric))
    search_stats = summarize(search[search[factors].astype(str).apply(tuple, axis=1).isin(
        set(fresh[factors].astype(str).apply(tuple, axis=1)))], factors, bounds=metric_bounds(metric))
    rows = []
    for r in confirmed.to_dict("records"):
        key = tuple(str(r[f]) for f in factors)
        before = search_stats[search_stats[factors].astype(str).apply(tuple, axis=1) == key]
        rows.append({**{f: str(r[f]) for f in factors}, "search (val, chosen)": f"{before['mean'].iloc[0]:.4f}" if len(before) else "-",
                     "seeds": r["n"], f"confirmed {value} mean": f"{r['mean']:.4f}", "95% CI": interval(r["ci_low"], r["ci_high"])})
    with_reference = " and its best reference configuration" if reference else ""
    top, per = info.get("top", "?"), info.get("per")
    chosen = "the best configuration" if top == 1 else f"the {top} best configurations"
    chosen += f" of each {per}" if per else " of the search"
    out = ["## Confirmed on fresh seeds",
           f"Study `{confirm_study.study_name}`: {chosen}{with_reference}, "
           f"rerun on seeds {sorted(int(s) for s in fresh['seed'].unique())} that chose nothing. "
           f"{'Each run is its best checkpoint (by val/acc) on the held-out test split' if use_test else 'No test split: the objective'}; "
           "the search column is the val estimate on the seeds that picked it (biased upward).",
           frame_table(pd.DataFrame(rows))]
    if reference:
        diffs = differences_to(fresh, factors, reference, confirm_study.direction.name.lower() == "maximize", margin,
                               value)
        lines = [f"- {', '.join(f'{f}={d[f]}' for f in factors)}: {d['mean_diff']:+.4f} "
                 f"{interval(d['ci_low'], d['ci_high'])}, p = {p_value(d['p_diff'])} (Holm {p_value(d['p_diff_holm'])}): **"
                 + verdict_text(d["verdict"], margin, d) + "**"
                 for d in diffs.to_dict("records")]
        out += [f"Paired difference to the reference on the fresh seeds ({value}), confirmed:", "\n".join(lines)]
        if use_test:
            out += crossed_lines(fresh, factors, reference, margin)
    return out


def confirmation_design(confirm_study: optuna.Study, space: SearchSpace,
                        search: pd.DataFrame) -> tuple[pd.DataFrame, list[str], dict | None]:
    """A confirmation's completed seed runs, the factors that tell its configurations apart (with the search's),
    and its reference cell (None where it has none)."""
    fresh = seed_run_table(confirm_study, space)
    if fresh.empty:
        return fresh, [], None
    factors = varying_factors(pd.concat([search, fresh]).drop(columns=NOT_FACTORS, errors="ignore"))
    return fresh, factors, reference_in(fresh, factors, as_cell(confirm_study.user_attrs.get(DESIGN, {}).get("reference")))


def reference_pairs(fresh: pd.DataFrame, factors: list[str], reference: dict) -> dict[str, tuple[dict, dict]]:
    """Each configuration's label -> (its run folders by seed, the reference's run folders by seed)."""
    text = fresh.assign(**{f: fresh[f].astype(str) for f in factors})
    is_ref = (text[list(reference)] == [str(v) for v in reference.values()]).all(axis=1)
    runs_of = lambda rows: rows.dropna(subset=["run_dir"]).set_index("seed")["run_dir"].to_dict()  # noqa: E731
    return {", ".join(f"{f}={k[i]}" for i, f in enumerate(factors)): (runs_of(rows), runs_of(text[is_ref]))
            for k, rows in text[~is_ref].groupby(factors, sort=False)}


def confirmation_verdicts(confirm_study: optuna.Study, space: SearchSpace, search: pd.DataFrame, margin: float,
                          alpha: float = ALPHA) -> tuple[pd.DataFrame, str]:
    """Every confirmed configuration against the reference as one Holm family at level ``alpha``: over seeds x
    test images where every run saved its predictions, else over seeds on the test split (the objective where
    runs have none); and which of the two it is. Empty where there is no reference or no run yet."""
    fresh, factors, reference = confirmation_design(confirm_study, space, search)
    if fresh.empty or not reference:
        return pd.DataFrame(), "none"
    if fresh[TEST].notna().all():
        try:
            return crossed_family(reference_pairs(fresh, factors, reference), margin, alpha)[0], "seeds x images"
        except ConfigError:  # runs from before predictions were saved
            pass
    value = TEST if fresh[TEST].notna().all() else "value"
    return differences_to(fresh, factors, reference, confirm_study.direction.name.lower() == "maximize", margin,
                          value, alpha), "seeds"


def crossed_lines(fresh: pd.DataFrame, factors: list[str], reference: dict, margin: float) -> list[str]:
    """The confirmed differences again over seeds x test images (the test set's sampling in the interval)."""
    try:
        table, seeds = crossed_family(reference_pairs(fresh, factors, reference), margin)
    except ConfigError as err:  # runs from before predictions were saved
        return [f"Over seeds and test images: not computed ({err})."]
    return ["The same differences over seeds × test images (the test set's own sampling in the interval; "
            f"seeds {seeds}, {int(table['n_images'].iloc[0])} images; Holm over these rows):",
            "\n".join(f"- {r['label']}: {points(r['mean_diff'])} points {points_interval(r['ci_low'], r['ci_high'])} "
                      f"(seed-only {points_interval(r['seed_ci_low'], r['seed_ci_high'])}): **"
                      + verdict_text(r["verdict"], margin) + "**"
                      + ("" if r["verdict"] in ("better", "worse", "equivalent") else
                         "; " + planning_text(r, margin, len(seeds), int(r["n_images"])))
                      for r in table.to_dict("records"))]
