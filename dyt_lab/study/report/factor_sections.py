"""The report's sections on a seeded study's factors: the factorial effects and their ANOVA, where the
interactions act (corners), the gap split by factor (Shapley shares), and how an arm's gap changes across the
other factors. The statistics are in ``factorial.py``; this module chooses what to show and renders it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from dyt_lab.study.report import factorial
from dyt_lab.study.report.known_points import corner_name
from dyt_lab.study.report.markdown import frame_table, number, p_value, with_interval
from dyt_lab.study.report.seed_runs import TEST
from dyt_lab.study.report.statistics import text_of


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
                         "estimate [95% CI]": with_interval(shown, "estimate"),
                         "p": shown["p_value"].map(p_value), "p (Holm, term)": shown["term"].map(lambda t: p_value(holm.get(t)))})
    out += ["A two-level factor's main effect is the difference between its levels (the contrast names it: the "
            "other level minus the reference's where the reference sets the factor), averaged over the other factors; "
            "a factor of more levels shows each level's sum-coded effect (its mean minus the grand mean). Interactions "
            "with Holm-adjusted p < 0.05 are shown as their sum-coded coefficients at the named levels (one for "
            "two-level factors, where a k-way difference of differences is 2^k times it; every level combination "
            "otherwise). p is the coefficient's own t-test; p (Holm, term) is the whole term's F-test over all the "
            "model's terms, adjusted by Holm.",
            frame_table(rows)]
    shares = pd.DataFrame({"term": anova["term"], "df": anova["df"].map(lambda d: f"{d:g}"),
                           "F": anova["F"].map(lambda f: number(f, 1)), "p": anova["p_value"].map(p_value),
                           "p (Holm)": anova["term"].map(lambda t: p_value(holm.get(t))),
                           "share of variance": anova["eta_sq"].map(lambda e: f"{100 * e:.1f}%")})
    out += ["Type-II ANOVA of the saturated model (statsmodels):", frame_table(shares)]
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
                         "change [95% CI]": with_interval(corners, "estimate"),
                         "p (Holm)": corners["p (Holm)"].map(p_value)})
    return ["Where the interactions act: each factor switched from its gap_from level to its reference level, "
            "alone from the gap_from corner, and last (the others already at the reference) into the reference "
            "corner; a change is the cell after the switch minus the cell before (a step along the path, not a Δ). "
            "Without interactions the two rows agree.", frame_table(rows)]


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
                f"Not shown: the reference {text_of(reference)} is not one level of one factor here."]
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
                             "Δ arm − ref at from [95% CI]": with_interval(changes, "gap_first", "gap_first_"),
                             "Δ arm − ref at to [95% CI]": with_interval(changes, "gap_later", "gap_later_"),
                             "change of Δ (to − from) [95% CI]": with_interval(changes, "estimate"),
                             "p (Holm)": pd.Series(multipletests(changes["p_value"], method="holm")[1]).map(p_value)})
        out += [f"{label}, reference {reference_level}:", frame_table(rows)]
    return out


def response_factor(table: pd.DataFrame, factors: list[str]) -> str | None:
    """A numeric factor with at least 4 levels (alpha_init, say): the study measures a response curve over it."""
    for f in factors:
        levels = [v for v in table[f].unique() if str(v) != "-"]
        if len(levels) >= 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels):
            return f
    return None
