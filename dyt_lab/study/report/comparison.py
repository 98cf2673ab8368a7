"""The report of a study with replicated seeds: configurations with intervals, paired differences to
the reference, factor effects, and the gap between two configurations split by factor.

The statistics are in ``statistics.py`` and ``factorial.py`` (statsmodels and scipy); the seed-run table and
the pairing with the reference in ``seed_runs.py``; the factor sections in ``factor_sections.py``; a
confirmation's in ``confirmation.py``. This module puts the sections of a seeded study's report together.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from dyt_lab.study.definition.design import design_cells, varying_factors
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.report.confirmation import confirmed_section
from dyt_lab.study.report.factor_sections import (
    attribution_section,
    crossed,
    effects_section,
    gap_change_section,
    is_full_factorial,
    response_factor,
)
from dyt_lab.study.report.known_points import familiar_names, fixed_options, name_of
from dyt_lab.study.report.markdown import frame_table, interval, number, p_value, verdict_text
from dyt_lab.study.report.plots import configurations_plot, main_effects_plot, response_plot
from dyt_lab.study.report.seed_runs import (
    EXTRA,
    NOT_FACTORS,
    TEST,
    as_cell,
    differences_to,
    metric_bounds,
    one_configuration,
    reference_in,
    seed_run_table,
)
from dyt_lab.study.report.statistics import summarize


def configurations_section(table: pd.DataFrame, factors: list[str], reference: dict | None, direction: str,
                           margin: float, metric: str) -> str:
    """Mean, spread and 95% interval per configuration, last-epoch and test metrics, and the verdict vs the reference."""
    summary = summarize(table, factors, bounds=metric_bounds(metric))
    shown_extra = [*EXTRA.values(), *([TEST] if table[TEST].notna().any() else [])]
    extras = table.groupby(factors)[shown_extra].mean().reset_index()
    summary[factors] = summary[factors].astype(str)
    extras[factors] = extras[factors].astype(str)
    merged = summary.merge(extras, on=factors, how="left")
    if reference:
        # no bounds: a difference's interval past the metric's range is shown as it is, never cut to ±1
        diffs = differences_to(table, factors, reference, direction == "maximize", margin)
        diffs[factors] = diffs[factors].astype(str)
        merged = merged.merge(diffs, on=factors, how="left", suffixes=("", "_diff"))
    fixed = fixed_options(table, factors)
    shown = pd.DataFrame({"name": [name_of({**fixed, **r}) for r in merged[factors].to_dict("records")]})
    for f in factors:
        shown[f] = merged[f]
    shown["seeds"] = merged["n"]
    shown["mean ± sd"] = [f"{m:.4f} ± {s:.4f}" if pd.notna(s) else f"{m:.4f}" for m, s in zip(merged["mean"], merged["std"])]
    shown["95% CI"] = [interval(lo, hi) for lo, hi in zip(merged["ci_low"], merged["ci_high"])]
    for label in shown_extra:
        shown[label] = merged[label].map(number)
    if reference:
        is_ref = [all(str(r.get(k)) == str(v) for k, v in reference.items()) for r in merged[factors].to_dict("records")]
        shown["Δ row − reference [95% CI]"] = [
            "-" if ref or pd.isna(d) else f"{d:+.4f} " + (f"[{lo:+.4f}, {hi:+.4f}]" if pd.notna(lo) else "(too few seeds)")
            for d, lo, hi, ref in zip(merged["mean_diff"], merged["ci_low_diff"], merged["ci_high_diff"], is_ref)]
        shown["p"] = merged["p_diff"].map(p_value)
        shown["p (Holm)"] = merged["p_diff_holm"].map(p_value)
        verdict = merged["verdict"].where(~pd.Series(is_ref), "reference").fillna("no reference cell")
        shown["verdict"] = [verdict_text(v, margin, r) for v, r in zip(verdict, merged.to_dict("records"))]
    if not shown["name"].astype(bool).any():
        shown = shown.drop(columns="name")
    return frame_table(shown)


def replicated_sections(study: optuna.Study, space: SearchSpace, design: dict, folder: Path, metric: str,
                        margin: float, confirm_study: optuna.Study | None = None,
                        confirms: dict | None = None) -> tuple[list[str], list[Path]]:
    """The report's sections for a study with seeds (its values decoded by ``space``), and the plots they refer to.

    ``confirms``: what this study confirms, if it is itself a confirmation (``dyt-lab study confirm``)."""
    table = seed_run_table(study, space)
    if table.empty:
        return ["## Configurations", "No completed seed run yet."], []
    factors = varying_factors(table.drop(columns=NOT_FACTORS))
    if not factors:  # one configuration (a reference study, a confirm of one): summarize it as such
        table, factors = table.assign(configuration=one_configuration(table)), ["configuration"]
    table.to_csv(folder / "seed_runs.csv", index=False)
    reference, start = reference_in(table, factors, as_cell(design.get("reference"))), as_cell(design.get("gap_from"))
    sections = ["## Configurations (mean over seeds)",
                f"{metric} over seeds {sorted(int(s) for s in table['seed'].unique())}. The 95% interval is a t-interval; "
                "its spread is pooled over configurations unless Bartlett's test says spreads differ. "
                f"Δ is the row minus the reference, paired over shared seeds, with p raw and Holm-adjusted over the "
                f"table; the verdict is better, worse, equivalent (TOST within ±{margin:g}) or inconclusive. "
                + ("test/acc is the best checkpoint (by val/acc) on the held-out test split. " if table[TEST].notna().any() else ""),
                configurations_section(table, factors, reference, study.direction.name.lower(), margin, metric)]
    files = [configurations_plot(table, factors, folder, metric, metric_bounds(metric), familiar_names(table, factors))]
    sections.append(f"`{files[0].name}`: each configuration's mean with its 95% interval, as in the table.")
    if confirms:
        what = ("the best configuration and its one-factor neighbours, each compared with the best"
                if confirms.get("ablate") else "its chosen configurations")
        changed = [f"`{confirms['config']}`"] if confirms.get("config") else []
        changed += [f"`{k}={v}`" for k, v in (confirms.get("overrides") or {}).items()]
        where = f", with {', '.join(changed)} after the search's configs" if changed else ""
        sections.append(f"A confirmation of study `{confirms.get('study')}`: {what}, on seeds that chose nothing{where}.")
    elif confirm_study is None:
        # several arms (norm names): each at its own best is the comparison a reader wants; else the top three
        which = "--top 1 --per name" if "name" in factors and table["name"].nunique() > 1 else "--top 3"
        sections.append(f"Not confirmed: the best configurations were chosen on the seeds that measure them, so their "
                        f"estimates are biased upward. Confirm them on fresh seeds: "
                        f"`dyt-lab study confirm {study.study_name} {which} --seeds 10..14`.")
    else:
        sections += confirmed_section(confirm_study, space, table, margin, metric)
    if (x := response_factor(table, factors)) is not None and table["seed"].nunique() >= 2:
        files.append(response_plot(table, factors, x, reference, folder, metric, EXTRA["train/loss_epoch"]))
        sections += [f"## Response to {x}", f"`{files[-1].name}`: {metric} and the last training loss against {x}, "
                     "mean and 95% interval over seeds (clipped at 0 for the loss, which cannot be negative), over "
                     "the reference's band at the same other levels."]
    if table[factors].astype(str).drop_duplicates().shape[0] > 1 and table["seed"].nunique() >= 2:
        as_crossed, crossed_factors = crossed(table, factors)
        merged = [f for f in crossed_factors if f not in factors]
        sections += ["## Factor effects",
                     *([f"Levels never crossed are one factor here: {', '.join(f'`{f}`' for f in merged)}."] if merged else []),
                     *effects_section(as_crossed, crossed_factors, reference, start)]
        if is_full_factorial(as_crossed, crossed_factors):
            files.append(main_effects_plot(as_crossed, crossed_factors, folder, metric, metric_bounds(metric)))
        if reference:
            cells = design_cells(space)  # the levels in the order the study file lists them
            order = {f: list(dict.fromkeys(str(c[f]) for c in cells)) for f in crossed_factors
                     if all(f in c for c in cells)}
            sections += gap_change_section(as_crossed, crossed_factors, reference, order, metric)
    if reference and start:
        sections += ["## The gap, factor by factor",
                     "Shapley shares: each factor's average contribution over the orders in which the factors "
                     "can be switched from gap_from to the reference (factorial.gap_attribution); the gap from A to "
                     "B is B − A, a path's end minus its start (not a Δ); a share's interval is Fieller's, which "
                     "carries the gap's own uncertainty.",
                     *attribution_section(table, factors, start, reference)]
    return sections, files
