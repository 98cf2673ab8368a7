"""The report of a study with replicated seeds: configurations with intervals, paired differences to
the reference, factor effects, and the gap between two configurations split by factor.

The statistics are in ``statistics.py`` (statsmodels and scipy); this module turns the study's
trials into the table those functions take (one row per completed seed run) and renders Markdown.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from dyt_lab.study import statistics
from dyt_lab.study.design import trial_levels, varying_factors
from dyt_lab.study.markdown import markdown_table
from dyt_lab.study.plots import pyplot, save_figure
from dyt_lab.study.protocol import LAST_METRICS_ATTR
from dyt_lab.study.replicates import SEED_ATTR

# Named points of the factored norm's (center, scale, squash) space, to label the table's rows.
KNOWN_POINTS = {("batch", "batch_std", "none"): "BatchNorm", ("none", "alpha", "tanh"): "DyT",
                ("batch", "alpha", "tanh"): "dyt_centered", ("none", "none", "none"): "affine only",
                ("batch", "batch_std", "tanh"): "BN + tanh", ("batch", "running_std", "none"): "BN, no batch noise",
                ("none", "batch_std", "none"): "BN scale only", ("batch", "alpha", "none"): "BN center only",
                ("batch", "alpha_channel", "tanh"): "centered, per-channel alpha"}
EXTRA = {"val/acc": "val/acc (last)", "train/loss_epoch": "train loss (last)"}  # last-epoch metrics shown


def seed_run_table(study: optuna.Study) -> pd.DataFrame:
    """One row per completed seed run: its factor levels, seed, objective value and last-epoch metrics."""
    rows, factors = [], set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        last = trial.user_attrs.get(LAST_METRICS_ATTR) or {}
        levels = trial_levels(trial)
        factors.update(levels)
        rows.append({**levels, "seed": trial.user_attrs.get(SEED_ATTR, 0), "value": trial.value,
                     **{label: last.get(metric) for metric, label in EXTRA.items()}, "trial": trial.number})
    # a level a configuration does not set (LayerNorm has no alpha_init) is "-", not NaN, so it groups
    return pd.DataFrame(rows).fillna({k: "-" for k in factors})


def name_of(levels: dict) -> str:
    """A cell's familiar name (BatchNorm, DyT, ...) if it is a known point of the factored norm."""
    return KNOWN_POINTS.get(tuple(str(levels.get(k)) for k in ("center", "scale", "squash")), "")


def _fmt(x, digits: int = 4) -> str:
    return "-" if pd.isna(x) else f"{x:.{digits}f}"


def _table(frame: pd.DataFrame) -> str:
    return markdown_table(list(frame.columns), [[str(v) for v in row] for row in frame.itertuples(index=False)])


def differences_to(table: pd.DataFrame, factors: list[str], reference: dict, higher_is_better: bool) -> pd.DataFrame:
    """Each configuration's paired difference to its reference cell: the cell with ``reference``'s
    levels that shares the most of this configuration's other levels (the same lr, say)."""
    text = table.assign(**{f: table[f].astype(str) for f in factors})
    configs = text[factors].drop_duplicates().to_dict("records")
    candidates = [c for c in configs if all(c[k] == str(v) for k, v in reference.items())]
    rows = []
    for config in configs:
        shared = [sum(c[f] == config[f] for f in factors if f not in reference) for c in candidates]
        if not shared or shared.count(max(shared)) > 1:
            continue  # no reference cell, or no single closest one
        target = candidates[shared.index(max(shared))]
        pair = text[(text[factors] == [config[f] for f in factors]).all(axis=1)
                    | (text[factors] == [target[f] for f in factors]).all(axis=1)]
        diff = statistics.paired_differences(pair, factors, target, higher_is_better=higher_is_better)
        rows.append(diff[(diff[factors].astype(str) == [config[f] for f in factors]).all(axis=1)])
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=[*factors, "mean_diff", "ci_low",
                                                                              "ci_high", "verdict"])


def configurations_section(table: pd.DataFrame, factors: list[str], reference: dict | None, direction: str) -> str:
    """Mean, spread and 95% interval per configuration, last-epoch metrics, and the difference to the reference."""
    summary = statistics.summarize(table, factors)
    extras = table.groupby(factors)[list(EXTRA.values())].mean().reset_index()
    summary[factors] = summary[factors].astype(str)
    extras[factors] = extras[factors].astype(str)
    merged = summary.merge(extras, on=factors, how="left")
    if reference:
        diffs = differences_to(table, factors, reference, direction == "maximize")
        diffs[factors] = diffs[factors].astype(str)
        merged = merged.merge(diffs[[*factors, "mean_diff", "ci_low", "ci_high", "verdict"]], on=factors,
                              how="left", suffixes=("", "_diff"))
    fixed = {c: table[c].iloc[0] for c in ("center", "scale", "squash") if c in table and c not in factors}
    shown = pd.DataFrame({"name": [name_of({**fixed, **r}) for r in merged[factors].to_dict("records")]})
    for f in factors:
        shown[f] = merged[f]
    shown["seeds"] = merged["n"]
    shown["mean ± sd"] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(merged["mean"], merged["std"])]
    shown["95% CI"] = [f"[{lo:.4f}, {hi:.4f}]" for lo, hi in zip(merged["ci_low"], merged["ci_high"])]
    for label in EXTRA.values():
        shown[label] = merged[label].map(_fmt)
    if reference:
        shown["Δ vs reference [95% CI]"] = [
            "-" if v == "reference" or pd.isna(d) else f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
            for d, lo, hi, v in zip(merged["mean_diff"], merged["ci_low_diff"], merged["ci_high_diff"], merged["verdict"])]
        shown["verdict"] = merged["verdict"].fillna("no reference cell")
    if not shown["name"].astype(bool).any():
        shown = shown.drop(columns="name")
    return _table(shown)


def toward(effects: pd.DataFrame, reference: dict | None) -> pd.DataFrame:
    """Level differences read toward the reference: ``batch - none`` rather than ``none - batch``."""
    effects = effects.copy()
    for i, row in effects[effects["kind"] == "difference"].iterrows():
        first, _, second = str(row["level"]).partition(" - ")
        if reference and str(reference.get(row["term"])) == second:
            effects.loc[i, ["level", "estimate", "ci_low", "ci_high"]] = [
                f"{second} - {first}", -row["estimate"], -row["ci_high"], -row["ci_low"]]
    return effects


def effects_section(table: pd.DataFrame, factors: list[str], reference: dict | None = None) -> list[str]:
    """Main effects (as level differences) and two-way interactions with intervals, and the ANOVA table."""
    try:
        effects, anova = statistics.factorial_effects(table, factors)
    except ValueError as err:
        return [f"No factor effects: {err}."]
    effects = toward(effects, reference)
    diffs = effects[effects["kind"].isin(["difference", "interaction"])]
    # a two-level interaction has one free coefficient, listed once per level pair: keep its first row
    diffs = diffs[(diffs["kind"] == "difference") | (diffs["p_value"] < 0.05)].drop_duplicates("term")
    rows = pd.DataFrame({"term": diffs["term"], "contrast": diffs["level"],
                         "estimate [95% CI]": [f"{e:+.4f} [{lo:+.4f}, {hi:+.4f}]" for e, lo, hi in
                                               zip(diffs["estimate"], diffs["ci_low"], diffs["ci_high"])],
                         "p": diffs["p_value"].map(lambda p: f"{p:.2g}")})
    shares = pd.DataFrame({"term": anova["term"], "df": anova["df"].map(lambda d: f"{d:g}"),
                           "F": anova["F"].map(lambda f: _fmt(f, 1)), "p": anova["p_value"].map(lambda p: "-" if pd.isna(p) else f"{p:.2g}"),
                           "share of variance": anova["eta_sq"].map(lambda e: f"{100 * e:.1f}%")})
    return ["Main effects are differences between a factor's two levels, averaged over the other factors "
            "(sum-coded OLS, seed as a block). Two-way interactions with p < 0.05 are shown as their sum-coded "
            "coefficient at the named levels (the difference of differences is 4x it).", _table(rows),
            "Type-II ANOVA (statsmodels):", _table(shares)]


def attribution_section(table: pd.DataFrame, factors: list[str], start: dict, end: dict) -> list[str]:
    """The gap from ``start`` to ``end`` split by Shapley value over the factors that differ."""
    label = f"the {name_of(end) or 'reference'}-{name_of(start) or 'gap_from'} gap"
    others = [f for f in factors if f not in start]
    out = []
    for at in [None] + [{f: level} for f in others for level in sorted(table[f].astype(str).unique())]:
        try:
            parts = statistics.gap_attribution(table, factors, start, end, at=at)
        except ValueError as err:
            out.append(f"No attribution{f' at {at}' if at else ''}: {err}.")
            if at is None:
                break  # the cells it lacks are lacking at every level too
            continue
        where = "averaged over " + ", ".join(others) if at is None and others else \
            ", ".join(f"at {k} = {v}" for k, v in (at or {}).items())
        out.append(f"**{label[0].upper() + label[1:]}{', ' + where if where else ''}:**")
        out.append("\n".join(f"- {line}" for line in statistics.attribution_sentences(parts, gap_label=label)))
    return out


def main_effects_plot(table: pd.DataFrame, factors: list[str], folder: Path, metric: str) -> Path:
    """One panel per factor: the mean objective at each level, with the 95% interval over seeds."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 3.2), sharey=True, squeeze=False)
    for ax, factor in zip(axes.flat, factors):
        # the level's mean per seed (over the other factors), then the t-interval over seeds
        by_seed = table.assign(_level=table[factor].astype(str)).groupby(["_level", "seed"], as_index=False)["value"].mean()
        per_level = statistics.summarize(by_seed, ["_level"])
        per_level = per_level.sort_values("_level")
        ax.errorbar(per_level["_level"], per_level["mean"], yerr=[per_level["mean"] - per_level["ci_low"],
                    per_level["ci_high"] - per_level["mean"]], fmt="o-", capsize=4)
        ax.set_title(factor)
        ax.set_xlabel("level")
    axes.flat[0].set_ylabel(metric)
    return save_figure(axes, folder / "main_effects.png")


def replicated_sections(study: optuna.Study, design: dict, folder: Path, metric: str) -> tuple[list[str], list[Path]]:
    """The report's sections for a study with seeds, and the plots they refer to."""
    table = seed_run_table(study)
    if table.empty:
        return ["## Configurations", "No completed seed run yet."], []
    factors = varying_factors(table.drop(columns=["seed", "value", "trial", *EXTRA.values()]))
    table.to_csv(folder / "seed_runs.csv", index=False)
    reference, start = design.get("reference"), design.get("gap_from")
    sections = ["## Configurations (mean over seeds)",
                f"{metric} over seeds {sorted(int(s) for s in table['seed'].unique())}; the interval is the t-interval of the mean; "
                "Δ is the paired difference to the reference over shared seeds (a CI that contains 0 is no difference).",
                configurations_section(table, factors, reference, study.direction.name.lower())]
    files = []
    if len(factors) >= 1 and table["seed"].nunique() >= 2:
        sections += ["## Factor effects", *effects_section(table, factors, reference)]
        files.append(main_effects_plot(table, factors, folder, metric))
    if reference and start:
        sections += ["## The gap, factor by factor",
                     "Shapley shares: each factor's average contribution over the orders in which the factors "
                     "can be switched from gap_from to the reference (statistics.gap_attribution).",
                     *attribution_section(table, factors, start, reference)]
    return sections, files
