"""The report of a study with replicated seeds: configurations with intervals, paired differences to
the reference, factor effects, and the gap between two configurations split by factor.

The statistics are in ``statistics.py`` (statsmodels and scipy); this module turns the study's
trials into the table those functions take (one row per completed seed run) and renders Markdown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from statsmodels.stats.multitest import multipletests

from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.design import design_cells, trial_levels, varying_factors
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.report import factorial, statistics
from dyt_lab.study.report.markdown import markdown_table
from dyt_lab.study.report.per_image import crossed_family, planning_text, points, points_interval
from dyt_lab.study.report.plots import configurations_plot, main_effects_plot, response_plot
from dyt_lab.study.trial.protocol import LAST_METRICS_ATTR, SEED_ATTR, TEST_METRICS_ATTR

# Named points of the factored norm's (center, scale, squash) space, to label the table's rows. Without
# a center, a std scale divides by the root mean square around 0 (E[x^2]), not by a standard deviation:
# those rows say "RMS".
KNOWN_POINTS = {("batch", "batch_std", "none"): "BatchNorm", ("none", "alpha", "tanh"): "DyT",
                ("batch", "alpha", "tanh"): "dyt_centered", ("none", "none", "none"): "affine only",
                ("batch", "batch_std", "tanh"): "BN + tanh", ("batch", "running_std", "none"): "BN, no batch noise",
                ("none", "batch_std", "none"): "batch RMS only", ("none", "batch_std", "tanh"): "batch RMS + tanh",
                ("none", "running_std", "none"): "running RMS only", ("none", "running_std", "tanh"): "running RMS + tanh",
                ("batch", "alpha", "none"): "BN center only", ("batch", "alpha_channel", "tanh"): "centered, per-channel alpha"}
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
        last = trial.user_attrs.get(LAST_METRICS_ATTR) or {}
        levels = trial_levels(trial, space)
        factors.update(levels)
        rows.append({**levels, "seed": trial.user_attrs.get(SEED_ATTR, 0), "value": trial.value,
                     **{label: last.get(metric) for metric, label in EXTRA.items()},
                     TEST: (trial.user_attrs.get(TEST_METRICS_ATTR) or {}).get(TEST), "trial": trial.number,
                     "run_dir": trial.user_attrs.get("run_dir")})
    # a level a configuration does not set (LayerNorm has no alpha_init) is "-", not NaN, so it groups
    return pd.DataFrame(rows).fillna({k: "-" for k in factors})


def one_configuration(table: pd.DataFrame) -> str:
    """The label of a study's only configuration: its familiar name and the levels it sets (``BatchNorm
    (center=batch, ...)``, ``model.norm=batchnorm``), or the base config where the study searched no key."""
    first = table.iloc[0]
    levels = {c: first[c] for c in table.columns if c not in NOT_FACTORS and str(first[c]) != "-"}
    # a searched float (a sampled lr) to 4 digits: a label, not a record (seed_runs.csv keeps the value)
    known = name_of(levels)
    text = statistics.text_of({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in levels.items()})
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


def name_of(levels: dict) -> str:
    """A cell's familiar name (BatchNorm, DyT, ...) if it is a known point of the factored norm."""
    return KNOWN_POINTS.get(tuple(str(levels.get(k)) for k in ("center", "scale", "squash")), "")


def familiar_names(table: pd.DataFrame, factors: list[str]) -> dict[str, str]:
    """The configurations that are known points (BatchNorm, DyT) by their label (``text_of`` their levels)."""
    fixed = {c: table[c].iloc[0] for c in ("center", "scale", "squash") if c in table and c not in factors}
    cells = [{**fixed, **r} for r in table[factors].drop_duplicates().to_dict("records")]
    return {statistics.text_of({f: c[f] for f in factors}): name_of(c) for c in cells if name_of(c)}


def corner_name(levels: dict, role: str) -> str:
    """A corner's familiar name (DyT), 'all dyt' where every factor sits at one level (a placement), else its role."""
    values = {str(v) for v in levels.values()}
    return name_of(levels) or (f"all {values.pop()}" if len(values) == 1 and len(levels) > 1 else role)


def _fmt(x, digits: int = 4) -> str:
    return "-" if pd.isna(x) else f"{x:.{digits}f}"


def _table(frame: pd.DataFrame) -> str:
    return markdown_table(list(frame.columns), [[str(v) for v in row] for row in frame.itertuples(index=False)])


def differences_to(table: pd.DataFrame, factors: list[str], reference: dict, higher_is_better: bool,
                   margin: float, value: str = "value", confidence: float = 1 - statistics.ALPHA) -> pd.DataFrame:
    """Each configuration's paired difference to its reference cell, as one Holm family.

    With one reference cell (a confirm study: the reference at its best), every configuration is compared
    to it. With several (BatchNorm at each lr), a configuration's reference cell agrees with it on every
    other factor both set (the same lr; BatchNorm sets no alpha_init, "-") and shares the most levels;
    configurations with no such single cell are left out, rather than compared across learning rates.
    """
    text = table.assign(**{f: table[f].astype(str) for f in factors})
    configs = text[factors].drop_duplicates().to_dict("records")
    candidates = [c for c in configs if all(c[k] == str(v) for k, v in reference.items())]
    seeds_of = lambda c: text[(text[factors] == [c[f] for f in factors]).all(axis=1)].set_index("seed")[value]  # noqa: E731
    others = [f for f in factors if f not in reference]
    kept, diffs = [], []
    for config in configs:
        if config in candidates:
            continue
        agree = candidates if len(candidates) == 1 else [
            c for c in candidates if all(c[f] == config[f] for f in others if "-" not in (c[f], config[f]))]
        shared = [sum(c[f] == config[f] for f in others) for c in agree]
        if not shared or shared.count(max(shared)) > 1:
            continue  # no reference cell, or no single closest one
        kept.append(config)
        diffs.append((seeds_of(config) - seeds_of(agree[shared.index(max(shared))])).dropna().to_numpy())
    out = statistics.compare_pairs(diffs, confidence, higher_is_better=higher_is_better, margin=margin)
    return pd.concat([pd.DataFrame(kept, columns=factors), out], axis=1)


def _ci(low, high) -> str:
    return "too few seeds" if pd.isna(low) else f"[{low:.4f}, {high:.4f}]"


def _with_ci(frame: pd.DataFrame, estimate: str, prefix: str = "") -> list[str]:
    return [f"{e:+.4f} [{lo:+.4f}, {hi:+.4f}]" for e, lo, hi in
            zip(frame[estimate], frame[f"{prefix}ci_low"], frame[f"{prefix}ci_high"])]


def verdict_text(verdict: str, margin: float, row: dict | None = None) -> str:
    """A verdict as the tables print it: ``equivalent`` names its margin; ``inconclusive`` says, from ``row``'s
    ``mde`` and ``seeds_needed`` (``statistics.verdicts``), what it could have detected and what would decide it."""
    if verdict == "equivalent":
        return f"equivalent (±{margin:g})"
    if verdict != "inconclusive" or row is None or not np.isfinite(row.get("mde", np.nan)):
        return verdict
    needed = row.get("seeds_needed", np.nan)
    decide = "" if not isinstance(needed, (int, float)) or np.isnan(needed) else \
        f"; ±{margin:g} would need {needed:g} seeds, test images as they are" if np.isfinite(needed) else ""
    return f"inconclusive (detects ≥{row['mde']:.4f} with 80% power{decide})"


def _p(p) -> str:
    return "-" if pd.isna(p) else f"{p:.2g}"


def configurations_section(table: pd.DataFrame, factors: list[str], reference: dict | None, direction: str,
                           margin: float, metric: str) -> str:
    """Mean, spread and 95% interval per configuration, last-epoch and test metrics, and the verdict vs the reference."""
    summary = statistics.summarize(table, factors, bounds=metric_bounds(metric))
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
    fixed = {c: table[c].iloc[0] for c in ("center", "scale", "squash") if c in table and c not in factors}
    shown = pd.DataFrame({"name": [name_of({**fixed, **r}) for r in merged[factors].to_dict("records")]})
    for f in factors:
        shown[f] = merged[f]
    shown["seeds"] = merged["n"]
    shown["mean ± sd"] = [f"{m:.4f} ± {s:.4f}" if pd.notna(s) else f"{m:.4f}" for m, s in zip(merged["mean"], merged["std"])]
    shown["95% CI"] = [_ci(lo, hi) for lo, hi in zip(merged["ci_low"], merged["ci_high"])]
    for label in shown_extra:
        shown[label] = merged[label].map(_fmt)
    if reference:
        is_ref = [all(str(r.get(k)) == str(v) for k, v in reference.items()) for r in merged[factors].to_dict("records")]
        shown["Δ row − reference [95% CI]"] = [
            "-" if ref or pd.isna(d) else f"{d:+.4f} " + (f"[{lo:+.4f}, {hi:+.4f}]" if pd.notna(lo) else "(too few seeds)")
            for d, lo, hi, ref in zip(merged["mean_diff"], merged["ci_low_diff"], merged["ci_high_diff"], is_ref)]
        shown["p"] = merged["p_diff"].map(_p)
        shown["p (Holm)"] = merged["p_diff_holm"].map(_p)
        verdict = merged["verdict"].where(~pd.Series(is_ref), "reference").fillna("no reference cell")
        shown["verdict"] = [verdict_text(v, margin, r) for v, r in zip(verdict, merged.to_dict("records"))]
    if not shown["name"].astype(bool).any():
        shown = shown.drop(columns="name")
    return _table(shown)


def is_full_factorial(table: pd.DataFrame, factors: list[str]) -> bool:
    """Whether every combination of the factors' levels has runs (else effects are aliased)."""
    cells = table[factors].astype(str).drop_duplicates()
    return len(cells) == int(np.prod([table[f].astype(str).nunique() for f in factors]))


def crossed(table: pd.DataFrame, factors: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The factors made crossed where they can be: two factors whose levels were never crossed (a norm list's
    ``name`` and ``alpha_init``: BatchNorm has no alpha0) become one, whose levels are their combinations
    ("dyt, 0.5"), until every pair is crossed. A list of norms x presets x rates is then a full factorial with
    the norm as one factor of as many levels as the list, and its interactions (norm x preset: does the gap
    change with depth?) are tested."""
    table, factors = table.copy(), list(factors)
    while True:
        pairs = [(a, b) for i, a in enumerate(factors) for b in factors[i + 1:] if not is_full_factorial(table, [a, b])]
        if not pairs:
            return table, factors
        a, b = pairs[0]
        merged = f"{a}, {b}"
        table[merged] = table[a].astype(str) + ", " + table[b].astype(str)
        factors = [merged if f == a else f for f in factors if f != b]


def toward(effects: pd.DataFrame, reference: dict | None) -> pd.DataFrame:
    """Level differences read as the other level minus the reference's (``none - batch`` where the reference
    centers), the sign of Δ in every table of the report."""
    effects = effects.copy()
    for i, row in effects[effects["kind"] == "difference"].iterrows():
        first, _, second = str(row["level"]).partition(" - ")
        if reference and str(reference.get(row["term"])) == first:
            effects.loc[i, ["level", "estimate", "ci_low", "ci_high"]] = [
                f"{second} - {first}", -row["estimate"], -row["ci_high"], -row["ci_low"]]
    return effects


def effects_section(table: pd.DataFrame, factors: list[str], reference: dict | None = None,
                    start: dict | None = None) -> list[str]:
    """The saturated model's effects with Holm-adjusted p, the lack of fit of a two-way model, and the corners."""
    if not is_full_factorial(table, factors):
        return ["Not a full factorial (some level combinations were not run), so no factor effects; "
                "the paired differences above are the comparison."]
    try:
        effects, anova = factorial.factorial_effects(table, factors)
    except ValueError as err:
        return [f"No factor effects: {err}."]
    terms = anova[~anova["term"].isin(["seed", "Residual"])].copy()
    terms["p_holm"] = multipletests(terms["p_value"], method="holm")[1]
    holm = dict(zip(terms["term"], terms["p_holm"]))
    out = []
    if len(factors) > 2:
        lof = factorial.lack_of_fit(table, factors, order=2)
        fits = "it fits" if lof["p_value"] >= 0.05 else "it does NOT fit: the higher-order interactions matter"
        out.append(f"**Model.** The saturated model (every interaction; seed as a block). Lack of fit of the model "
                   f"with main effects and two-way interactions only: F({lof['df_num']:g}, {lof['df_den']:g}) = "
                   f"{lof['F']:.2f}, p = {lof['p_value']:.2g}: {fits}.")
    effects = toward(effects, reference)
    # A term of two-level factors has one free coefficient (the others are it or minus it); a term with a
    # factor of more levels has several, and its Holm p tests them all at once: each is shown.
    two_levels = {f for f in factors if table[f].nunique() == 2}
    one_free = effects["term"].map(lambda t: all(f in two_levels for f in t.split(":")))
    # every mask over the whole effects table (a mask of it applied to a subset is what pandas warns of)
    kind, significant = effects["kind"], effects["term"].map(lambda t: holm.get(t, 1) < 0.05)
    inter = (kind == "interaction") & significant
    shown = pd.concat([effects[kind == "difference"], effects[(kind == "main") & ~one_free],
                       effects[inter & one_free].drop_duplicates("term"), effects[inter & ~one_free]])
    rows = pd.DataFrame({"term": shown["term"], "contrast": shown["level"],
                         "estimate [95% CI]": _with_ci(shown, "estimate"),
                         "p": shown["p_value"].map(_p), "p (Holm, term)": shown["term"].map(lambda t: _p(holm.get(t)))})
    out += ["A two-level factor's main effect is the difference between its levels (the contrast names it: the "
            "other level minus the reference's where the reference sets the factor), averaged over the other factors; "
            "a factor of more levels shows each level's sum-coded effect (its mean minus the grand mean). Interactions "
            "with Holm-adjusted p < 0.05 are shown as their sum-coded coefficients at the named levels (one for "
            "two-level factors, where a k-way difference of differences is 2^k times it; every level combination "
            "otherwise). p is the coefficient's own t-test; p (Holm, term) is the whole term's F-test over all the "
            "model's terms, adjusted by Holm.",
            _table(rows)]
    shares = pd.DataFrame({"term": anova["term"], "df": anova["df"].map(lambda d: f"{d:g}"),
                           "F": anova["F"].map(lambda f: _fmt(f, 1)), "p": anova["p_value"].map(_p),
                           "p (Holm)": anova["term"].map(lambda t: _p(holm.get(t))),
                           "share of variance": anova["eta_sq"].map(lambda e: f"{100 * e:.1f}%")})
    out += ["Type-II ANOVA of the saturated model (statsmodels):", _table(shares)]
    if reference and start and set(start) == set(reference):
        out += corner_lines(table, factors, start, reference)
    return out


def corner_lines(table: pd.DataFrame, factors: list[str], start: dict, end: dict) -> list[str]:
    """Each part of the gap switched alone at the gap_from corner and last into the reference corner."""
    try:
        corners = factorial.corner_effects(table, factors, start, end)
    except ValueError as err:
        return [f"No corner effects: {err}."]
    corners["p (Holm)"] = multipletests(corners["p_value"], method="holm")[1]
    rows = pd.DataFrame({"factor": corners["factor"], "switched": corners["where"],
                         "change [95% CI]": _with_ci(corners, "estimate"),
                         "p (Holm)": corners["p (Holm)"].map(_p)})
    return ["Where the interactions act: each factor switched from its gap_from level to its reference level, "
            "alone from the gap_from corner, and last (the others already at the reference) into the reference "
            "corner; a change is the cell after the switch minus the cell before (a step along the path, not a Δ). "
            "Without interactions the two rows agree.", _table(rows)]


def attribution_section(table: pd.DataFrame, factors: list[str], start: dict, end: dict) -> list[str]:
    """The gap from ``start`` to ``end`` split by Shapley value over the factors that differ."""
    label = f"the gap from {corner_name(start, 'the gap_from corner')} to {corner_name(end, 'the reference')}"
    others = [f for f in factors if f not in start]
    out = []
    for at in [None] + [{f: level} for f in others for level in sorted(table[f].astype(str).unique())]:
        try:
            parts = factorial.gap_attribution(table, factors, start, end, at=at)
        except ValueError as err:
            out.append(f"No attribution{f' at {at}' if at else ''}: {err}.")
            if at is None:
                break  # the cells it lacks are lacking at every level too
            continue
        where = "averaged over " + ", ".join(others) if at is None and others else \
            ", ".join(f"at {k} = {v}" for k, v in (at or {}).items())
        out.append(f"**{label[0].upper() + label[1:]}{', ' + where if where else ''}:**")
        out.append("\n".join(f"- {line}" for line in factorial.attribution_sentences(parts, gap_label=label)))
    return out


def gap_change_section(table: pd.DataFrame, factors: list[str], reference: dict, order: dict[str, list],
                       metric: str) -> list[str]:
    """Whether each arm's gap to the reference grows or shrinks across each other factor (depth, budget, lr).

    Only where the reference is one level of one factor (a norm list, made one factor by ``crossed``): the
    arms are that factor's other levels. One Holm family per metric, over every change shown.
    """
    arms = [f for f in factors if set(reference) <= set(f.split(", "))]
    if len(arms) != 1 or len(factors) < 2 or not set(reference) <= set(table) or not is_full_factorial(table, factors):
        return []
    arm = arms[0]
    is_reference = np.logical_and.reduce([table[k].astype(str) == str(v) for k, v in reference.items()])
    at_reference = table.loc[is_reference, arm.split(", ")].astype(str).drop_duplicates()
    # The arm factor's other parts must be unset at the reference (BatchNorm's alpha_init "-"): a part the
    # reference sets ("batchnorm, tiny", a preset merged in while a cell was missing) would make a "gap" of depth.
    if len(at_reference) != 1 or any(at_reference.iloc[0][p] != "-" for p in arm.split(", ") if p not in reference):
        return ["## The gap across the other factors",
                f"Not shown: the reference {statistics.text_of(reference)} is not one level of one factor here."]
    reference_level = str(table.loc[is_reference, arm].iloc[0])
    out = ["## The gap across the other factors",
           f"Δ = arm − reference in {metric} (the sign of every Δ in this report), at each level; the change is Δ at a "
           "later level minus Δ at the first (a difference of two paired differences: a contrast of one cell-means "
           "model with the seed as a block). Intervals are per contrast; p is Holm-adjusted over the table."]
    values = [("value", metric)] + ([(TEST, TEST)] if table[TEST].notna().all() else [])
    for value, label in values:
        try:
            changes = pd.concat([factorial.gap_changes(table, factors, arm, reference_level, across,
                                                       order=order.get(across), value=value)
                                 .assign(across=across) for across in factors if across != arm], ignore_index=True)
        except ValueError as err:  # a study still running: too few seed runs to leave residual degrees of freedom
            out.append(f"No gap changes for {label}: {err}.")
            continue
        held = [f for f in factors if f != arm and f in changes]
        rows = pd.DataFrame({arm: changes[arm], "across": changes["across"],
                             "at": [", ".join(f"{f}={r[f]}" for f in held if pd.notna(r[f])) or "-"
                                    for r in changes.to_dict("records")],
                             "from -> to": changes["from"] + " -> " + changes["to"],
                             "Δ arm − ref at from [95% CI]": _with_ci(changes, "gap_first", "gap_first_"),
                             "Δ arm − ref at to [95% CI]": _with_ci(changes, "gap_later", "gap_later_"),
                             "change of Δ (to − from) [95% CI]": _with_ci(changes, "estimate"),
                             "p (Holm)": pd.Series(multipletests(changes["p_value"], method="holm")[1]).map(_p)})
        out += [f"{label}, reference {reference_level}:", _table(rows)]
    return out


def response_factor(table: pd.DataFrame, factors: list[str]) -> str | None:
    """A numeric factor with at least 4 levels (alpha_init, say): the study measures a response curve over it."""
    for f in factors:
        levels = [v for v in table[f].unique() if str(v) != "-"]
        if len(levels) >= 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels):
            return f
    return None


def confirmed_section(confirm_study: optuna.Study, space: SearchSpace, search: pd.DataFrame, margin: float,
                      metric: str) -> list[str]:
    """The confirm study's configurations: search-stage estimate beside the fresh-seed one, and the paired
    test-split difference to the reference on the fresh seeds (one Holm family). ``space``: the search's,
    which the confirm study keeps."""
    info = confirm_study.user_attrs.get("confirms", {})
    fresh, factors, reference = confirmation_design(confirm_study, space, search)
    if fresh.empty:
        return ["## Confirmed on fresh seeds", f"Study {confirm_study.study_name}: no completed run yet."]
    use_test = fresh[TEST].notna().all()
    value = TEST if use_test else "value"
    confirmed = statistics.summarize(fresh, factors, value=value, bounds=metric_bounds(metric))
    search_stats = statistics.summarize(search[search[factors].astype(str).apply(tuple, axis=1).isin(
        set(fresh[factors].astype(str).apply(tuple, axis=1)))], factors, bounds=metric_bounds(metric))
    rows = []
    for r in confirmed.to_dict("records"):
        key = tuple(str(r[f]) for f in factors)
        before = search_stats[search_stats[factors].astype(str).apply(tuple, axis=1) == key]
        rows.append({**{f: str(r[f]) for f in factors}, "search (val, chosen)": f"{before['mean'].iloc[0]:.4f}" if len(before) else "-",
                     "seeds": r["n"], f"confirmed {value} mean": f"{r['mean']:.4f}", "95% CI": _ci(r["ci_low"], r["ci_high"])})
    with_reference = " and its best reference configuration" if reference else ""
    top, per = info.get("top", "?"), info.get("per")
    chosen = "the best configuration" if top == 1 else f"the {top} best configurations"
    chosen += f" of each {per}" if per else " of the search"
    out = ["## Confirmed on fresh seeds",
           f"Study `{confirm_study.study_name}`: {chosen}{with_reference}, "
           f"rerun on seeds {sorted(int(s) for s in fresh['seed'].unique())} that chose nothing. "
           f"{'Each run is its best checkpoint (by val/acc) on the held-out test split' if use_test else 'No test split: the objective'}; "
           "the search column is the val estimate on the seeds that picked it (biased upward).",
           _table(pd.DataFrame(rows))]
    if reference:
        diffs = differences_to(fresh, factors, reference, confirm_study.direction.name.lower() == "maximize", margin,
                               value)
        lines = [f"- {', '.join(f'{f}={d[f]}' for f in factors)}: {d['mean_diff']:+.4f} "
                 f"{_ci(d['ci_low'], d['ci_high'])}, p = {_p(d['p_diff'])} (Holm {_p(d['p_diff_holm'])}): **"
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
    return fresh, factors, reference_in(fresh, factors, as_cell(confirm_study.user_attrs.get("design", {}).get("reference")))


def reference_pairs(fresh: pd.DataFrame, factors: list[str], reference: dict) -> dict[str, tuple[dict, dict]]:
    """Each configuration's label -> (its run folders by seed, the reference's run folders by seed)."""
    text = fresh.assign(**{f: fresh[f].astype(str) for f in factors})
    is_ref = (text[list(reference)] == [str(v) for v in reference.values()]).all(axis=1)
    runs_of = lambda rows: rows.dropna(subset=["run_dir"]).set_index("seed")["run_dir"].to_dict()  # noqa: E731
    return {", ".join(f"{f}={k[i]}" for i, f in enumerate(factors)): (runs_of(rows), runs_of(text[is_ref]))
            for k, rows in text[~is_ref].groupby(factors, sort=False)}


def confirmation_verdicts(confirm_study: optuna.Study, space: SearchSpace, search: pd.DataFrame, margin: float,
                          alpha: float = statistics.ALPHA) -> tuple[pd.DataFrame, str]:
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
    diffs = differences_to(fresh, factors, reference, confirm_study.direction.name.lower() == "maximize", margin,
                           value, confidence=1 - alpha)
    return diffs.assign(label=[", ".join(f"{f}={r[f]}" for f in factors) for r in diffs.to_dict("records")]), "seeds"


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
