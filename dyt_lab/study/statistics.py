"""Replicated-seed statistics for factorial studies: summaries, paired differences, effects, gap attribution.

Every function takes a pandas DataFrame with one row per finished seed run: the factor columns (strings
or numbers), a seed column (the same seeds for every configuration, so runs are paired by seed) and a
value column. The models are statsmodels OLS fits with the seed as a block effect, which is what pairing
means in a linear model; this module only writes formulas and contrast vectors and leaves the fitting,
tests and intervals to statsmodels and scipy.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm


def _check(table: pd.DataFrame, factors: list[str], value: str, seed: str) -> None:
    missing = [c for c in [*factors, seed, value] if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table (it has {list(table.columns)})")
    if table[value].isna().any():
        # A diverged run is a result too: silently dropping it would flatter the configuration.
        raise ValueError(f"{int(table[value].isna().sum())} rows have no {value!r}: drop or fill them first")
    dup = table.duplicated([*factors, seed])
    if dup.any():
        first = _text(table.loc[dup, [*factors, seed]].iloc[0].to_dict())
        raise ValueError(f"{int(dup.sum())} rows repeat a (configuration, seed) pair, first: {first}")


def _text(config: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def _t_half(std, n, confidence: float):
    """Half width of the t-interval of a mean; NaN where n < 2."""
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return stats.t.ppf((1 + confidence) / 2, n - 1) * np.asarray(std, dtype=float) / np.sqrt(n)


def _levels(column: pd.Series) -> pd.Categorical:
    """Levels as strings (so dict values match by text), ordered by value so that 0.001 < 0.01."""
    values = column.unique()
    try:
        order = sorted(values)
    except TypeError:
        order = sorted(values, key=str)
    return pd.Categorical(column.map(str), categories=list(dict.fromkeys(str(v) for v in order)))


def _check_estimable(model, what: str) -> None:
    n_rows, n_params = model.exog.shape
    if n_rows <= n_params:
        raise ValueError(f"{what}: {n_rows} rows for {n_params} parameters leave no residual degrees of "
                         "freedom: add seeds or drop interactions")
    aliased = n_params - np.linalg.matrix_rank(model.exog)
    if aliased:
        raise ValueError(f"{what}: {aliased} model columns are aliased (cells of the design are missing): "
                         "lower `interactions` or complete the design")


def _contrasts(results, rows: list[np.ndarray], confidence: float) -> pd.DataFrame:
    """Estimate, std err, t-interval and p-value of each contrast row, by statsmodels' t_test."""
    test = results.t_test(np.vstack(rows))
    ci = np.asarray(test.conf_int(alpha=1 - confidence))
    return pd.DataFrame({"estimate": np.ravel(test.effect), "std_err": np.ravel(test.sd),
                         "ci_low": ci[:, 0], "ci_high": ci[:, 1], "p_value": np.ravel(test.pvalue)})


def summarize(table: pd.DataFrame, factors: list[str], value: str = "value", seed: str = "seed",
              confidence: float = 0.95) -> pd.DataFrame:
    """Per configuration: seeds n, mean, std (ddof=1) and t-interval of the mean; best mean first."""
    _check(table, factors, value, seed)
    out = table.groupby(list(factors), sort=False)[value].agg(n="count", mean="mean", std="std").reset_index()
    half = _t_half(out["std"], out["n"], confidence)
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    return out.sort_values("mean", ascending=False, ignore_index=True)


def paired_differences(table: pd.DataFrame, factors: list[str], reference: dict, value: str = "value",
                       seed: str = "seed", confidence: float = 0.95,
                       higher_is_better: bool = True) -> pd.DataFrame:
    """Per configuration: mean, std and t-interval of (config - reference) over shared seeds, and a verdict."""
    _check(table, factors, value, seed)
    wide = table.set_index([*factors, seed])[value].unstack(seed)  # one row per configuration
    labels = [lab if isinstance(lab, tuple) else (lab,) for lab in wide.index]
    texts = [tuple(map(str, lab)) for lab in labels]
    wanted = tuple(str(reference.get(f)) for f in factors)
    if set(reference) != set(factors) or wanted not in texts:
        valid = [_text(dict(zip(factors, lab))) for lab in labels]
        more = f" (and {len(valid) - 4} more)" if len(valid) > 4 else ""
        raise ValueError(f"reference {_text(reference)} is not a configuration of the table; "
                         f"valid ones: {'; '.join(valid[:4])}{more}")
    ref = wide.iloc[texts.index(wanted)]
    diffs = wide.sub(ref, axis=1)  # NaN where a seed is missing on either side, so only pairs count
    out = pd.DataFrame({"n_pairs": diffs.count(axis=1), "mean_diff": diffs.mean(axis=1),
                        "std_diff": diffs.std(axis=1)})
    half = _t_half(out["std_diff"], out["n_pairs"], confidence)
    out["ci_low"], out["ci_high"] = out["mean_diff"] - half, out["mean_diff"] + half
    out["ref_std"] = ref.std()  # the reference's seed spread, for judging a difference's size
    gain = out["mean_diff"] if higher_is_better else -out["mean_diff"]
    out["verdict"] = np.select(
        [out["n_pairs"] < 2, (out["ci_low"] <= 0) & (out["ci_high"] >= 0), gain > 0],
        ["too few pairs", "no difference", "better"], "worse")
    out.loc[[t == wanted for t in texts], "verdict"] = "reference"
    return out.reset_index().sort_values("mean_diff", ascending=False, ignore_index=True)


def factorial_effects(table: pd.DataFrame, factors: list[str], value: str = "value", seed: str = "seed",
                      interactions: int = 2, confidence: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sum-coded OLS effects (main, interactions, 2-level differences) and a type-II ANOVA table."""
    _check(table, factors, value, seed)
    # Safe names f0, f1, ... let any column name appear in a formula; labels are mapped back below.
    data = pd.DataFrame({f"f{i}": _levels(table[f]) for i, f in enumerate(factors)})
    data["block"], data["y"] = _levels(table[seed]), table[value].to_numpy(dtype=float)
    levels = [list(data[f"f{i}"].cat.categories) for i in range(len(factors))]
    for f, lv in zip(factors, levels):
        if len(lv) < 2:
            raise ValueError(f"factor {f!r} has a single level ({lv[0]}): it has no effect to estimate")
    rhs = f"({' + '.join(f'C(f{i}, Sum)' for i in range(len(factors)))})**{interactions}"
    if data["block"].nunique() > 1:
        rhs += " + C(block)"
    model = smf.ols(f"y ~ {rhs}", data=data)
    _check_estimable(model, "factorial_effects")
    results = model.fit()
    names = list(results.params.index)

    def weights(combo: tuple[int, ...], level_idx: tuple[int, ...]) -> np.ndarray:
        # Sum coding keeps columns for all levels but the last; the last level's effect is minus the sum
        # of the others. So every level's (interaction) effect is a product of coding-matrix entries.
        w = np.zeros(len(names))
        for coded in itertools.product(*[range(len(levels[i]) - 1) for i in combo]):
            name = ":".join(f"C(f{i}, Sum)[S.{levels[i][a]}]" for i, a in zip(combo, coded))
            w[names.index(name)] = math.prod(1.0 if lv == a else (-1.0 if lv == len(levels[i]) - 1 else 0.0)
                                             for i, lv, a in zip(combo, level_idx, coded))
        return w

    labels, rows = [], []
    for order in range(1, interactions + 1):
        for combo in itertools.combinations(range(len(factors)), order):
            for level_idx in itertools.product(*[range(len(levels[i])) for i in combo]):
                labels.append((":".join(factors[i] for i in combo), "main" if order == 1 else "interaction",
                               ":".join(levels[i][lv] for i, lv in zip(combo, level_idx))))
                rows.append(weights(combo, level_idx))
    for i, lv in enumerate(levels):  # the readable form for 2-level factors: mean(b) - mean(a)
        if len(lv) == 2:
            labels.append((factors[i], "difference", f"{lv[1]} - {lv[0]}"))
            rows.append(weights((i,), (1,)) - weights((i,), (0,)))
    effects = pd.concat([pd.DataFrame(labels, columns=["term", "kind", "level"]),
                         _contrasts(results, rows, confidence)], axis=1)

    aov = anova_lm(results, typ=2)
    back = {f"C(f{i}, Sum)": f for i, f in enumerate(factors)} | {"C(block)": seed}
    anova = pd.DataFrame({"term": [":".join(back.get(p, p) for p in t.split(":")) for t in aov.index],
                          "sum_sq": aov["sum_sq"].to_numpy(), "df": aov["df"].to_numpy(),
                          "F": aov["F"].to_numpy(), "p_value": aov["PR(>F)"].to_numpy()})
    anova["eta_sq"] = anova["sum_sq"] / anova["sum_sq"].sum()  # share of all variance, residual included
    return effects, anova


def gap_attribution(table: pd.DataFrame, factors: list[str], start: dict, end: dict, at: dict | None = None,
                    value: str = "value", seed: str = "seed", confidence: float = 0.95) -> pd.DataFrame:
    """Shapley split of mean(end) - mean(start) over the factors that differ, as cell-mean contrasts."""
    _check(table, factors, value, seed)
    at = dict(at or {})
    for name, config in (("start", start), ("end", end), ("at", at)):
        if unknown := set(config) - set(factors):
            raise ValueError(f"{name} names {sorted(unknown)}, which are not among the factors {factors}")
    if set(start) != set(end):
        raise ValueError(f"start and end must set the same factors: {sorted(start)} vs {sorted(end)}")
    moved = [f for f in factors if f in start and str(start[f]) != str(end[f])]
    if not moved:
        raise ValueError("start and end are the same cell: there is no gap to attribute")
    if clash := set(moved) & set(at):
        raise ValueError(f"{sorted(clash)} differ between start and end, so `at` cannot hold them")
    held = {f: start[f] for f in start if f not in moved} | at
    averaged = [f for f in factors if f not in held and f not in moved]
    avg_levels = [list(_levels(table[f]).categories) for f in averaged]

    def corner(subset: frozenset) -> dict[tuple, float]:
        # The sub-design cell with the factors in `subset` at their end level, the other moved ones at their
        # start level, averaged with equal weights over the levels of the factors nobody fixed.
        fixed = {f: str(end[f] if f in subset else start[f]) for f in moved} | {f: str(v) for f, v in held.items()}
        combos = list(itertools.product(*avg_levels))
        return {tuple({**fixed, **dict(zip(averaged, c))}[f] for f in factors): 1 / len(combos) for c in combos}

    def contrast(*terms: tuple[float, frozenset]) -> dict[tuple, float]:
        w: dict[tuple, float] = {}
        for coef, subset in terms:
            for cell, share in corner(subset).items():
                w[cell] = w.get(cell, 0.0) + coef * share
        return w

    # Shapley value of factor i: the average over all orders of the change from switching i from its start
    # level to its end level, i.e. sum over subsets S of the others of |S|!(k-|S|-1)!/k! * (v(S+i) - v(S)).
    k, contrasts = len(moved), []
    for f in moved:
        terms = []
        for size in range(k):
            weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for s in itertools.combinations([g for g in moved if g != f], size):
                terms += [(weight, frozenset(s) | {f}), (-weight, frozenset(s))]
        contrasts.append(contrast(*terms))
    contrasts.append(contrast((1.0, frozenset(moved)), (-1.0, frozenset())))  # the gap itself, last

    keys = list(zip(*(table[f].map(str) for f in factors)))
    needed = set().union(*contrasts)
    if missing := [c for c in sorted(needed) if c not in set(keys)]:
        raise ValueError(f"cell {_text(dict(zip(factors, missing[0])))} is missing from the table "
                         f"({len(missing)} of the {len(needed)} cells this attribution needs)")
    # Fit only the cells the gap is made of: the cell means are free parameters, the seeds are blocks.
    codes = {cell: f"c{j}" for j, cell in enumerate(sorted(needed))}
    keep = np.array([key in needed for key in keys])
    data = pd.DataFrame({"cell": [codes[key] for key in itertools.compress(keys, keep)],
                         "block": _levels(table.loc[keep, seed]),
                         "y": table.loc[keep, value].to_numpy(dtype=float)})
    model = smf.ols("y ~ 0 + C(cell)" + (" + C(block)" if data["block"].nunique() > 1 else ""), data=data)
    _check_estimable(model, "gap_attribution")
    results = model.fit()
    names = list(results.params.index)
    rows = []
    for w in contrasts:
        row = np.zeros(len(names))
        for cell, weight in w.items():
            row[names.index(f"C(cell)[{codes[cell]}]")] = weight
        rows.append(row)
    est = _contrasts(results, rows, confidence)
    g = est.iloc[-1]
    out = est.iloc[:-1].rename(columns={"estimate": "shapley"})
    out.insert(0, "factor", moved)
    out.insert(1, "start", [start[f] for f in moved])
    out.insert(2, "end", [end[f] for f in moved])
    out["share"] = out["shapley"] / g["estimate"]
    # The share's interval treats the gap as known: it is the Shapley interval in units of the gap.
    bounds = np.sort(np.c_[out["ci_low"], out["ci_high"]] / g["estimate"], axis=1)
    out["share_ci_low"], out["share_ci_high"] = bounds[:, 0], bounds[:, 1]
    out["gap"], out["gap_ci_low"], out["gap_ci_high"] = g["estimate"], g["ci_low"], g["ci_high"]
    out["confidence"] = confidence
    return out.reset_index(drop=True)


def attribution_sentences(attribution: pd.DataFrame, gap_label: str = "the gap",
                          names: dict[str, str] | None = None) -> list[str]:
    """Plain-words lines for a gap_attribution table: the gap, then each factor's share with its interval."""
    names = names or {}

    def pct(x: float) -> str:
        return f"{100 * x:.0f}%".replace("-0%", "0%")  # no "-0%" for a tiny negative share

    first = attribution.iloc[0]
    ci = f"{100 * first['confidence']:.0f}% CI"
    lines = [f"{gap_label}: {first['gap']:+.4g} ({ci} {first['gap_ci_low']:+.4g} to {first['gap_ci_high']:+.4g})"]
    if first["gap_ci_low"] <= 0 <= first["gap_ci_high"]:
        lines[0] += ": not clearly different from zero, so the shares below mean little"
    unclear_gap = first["gap_ci_low"] <= 0 <= first["gap_ci_high"]
    for _, r in attribution.iterrows():
        move = f"{names.get(r['factor'], r['factor'])} ({r['start']} -> {r['end']})"
        if unclear_gap:  # shares of a gap that may be zero are meaningless: give the contribution itself
            lines.append(f"{move} contributes {r['shapley']:+.4g} ({ci} {r['ci_low']:+.4g} to {r['ci_high']:+.4g})")
            continue
        interval = f"({ci} {pct(r['share_ci_low'])} to {pct(r['share_ci_high'])})"
        if r["share"] >= 0:
            line = f"{move} closes {pct(r['share'])} of {gap_label} {interval}"
        else:
            line = f"{move} works against closing {gap_label}: {pct(r['share'])} {interval}"
        if r["ci_low"] <= 0 <= r["ci_high"]:
            line += ": no clear effect"
        lines.append(line)
    return lines
