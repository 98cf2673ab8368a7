"""Factorial studies with replicated seeds: effects from a model that fits, and a gap split by factor.

The models are statsmodels OLS fits with the seed as a block effect (what pairing means in a linear
model). ``factorial_effects`` fits the saturated model (every interaction) whenever every cell has
replicates, and ``lack_of_fit`` says whether a smaller model (main effects and two-way interactions)
would have described the data: a reduced model whose omitted terms matter leaves them in its residual
and makes its p-values describe a model that does not fit. ``corner_effects`` shows each factor where the
higher-order terms act: switched alone at the start corner and at the end corner of a gap.
``gap_attribution`` splits a gap into Shapley shares; a share is a ratio of two correlated estimates, so
its interval is Fieller's (exact under the model's normal errors), not the numerator's interval divided by
the gap's point estimate. ``gap_changes`` asks whether a gap to the reference grows or shrinks across a
factor's levels (depth, budget): a difference of two paired gaps.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm

from dyt_lab.study.report.statistics import ALPHA, check_table, text_of


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


def _design(table: pd.DataFrame, factors: list[str], value: str, seed: str) -> tuple[pd.DataFrame, list[list[str]]]:
    """The model frame with safe names f0, f1, ... (any column name fits a formula) and each factor's levels."""
    data = pd.DataFrame({f"f{i}": _levels(table[f]) for i, f in enumerate(factors)})
    data["block"], data["y"] = _levels(table[seed]), table[value].to_numpy(dtype=float)
    levels = [list(data[f"f{i}"].cat.categories) for i in range(len(factors))]
    for f, lv in zip(factors, levels):
        if len(lv) < 2:
            raise ValueError(f"factor {f!r} has a single level ({lv[0]}): it has no effect to estimate")
    return data, levels


def _formula(n_factors: int, order: int, blocked: bool) -> str:
    rhs = f"({' + '.join(f'C(f{i}, Sum)' for i in range(n_factors))})**{order}"
    return f"y ~ {rhs}" + (" + C(block)" if blocked else "")


def factorial_effects(table: pd.DataFrame, factors: list[str], value: str = "value", seed: str = "seed",
                      interactions: int | None = None, confidence: float = 1 - ALPHA
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sum-coded OLS effects (main, interactions, 2-level differences) and a type-II ANOVA table.

    ``interactions`` is the highest order of interaction in the model; None fits the saturated model.
    """
    check_table(table, factors, value, seed)
    data, levels = _design(table, factors, value, seed)
    order = len(factors) if interactions is None else interactions
    model = smf.ols(_formula(len(factors), order, data["block"].nunique() > 1), data=data)
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
    for k in range(1, order + 1):
        for combo in itertools.combinations(range(len(factors)), k):
            for level_idx in itertools.product(*[range(len(levels[i])) for i in combo]):
                labels.append((":".join(factors[i] for i in combo), "main" if k == 1 else "interaction",
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


def lack_of_fit(table: pd.DataFrame, factors: list[str], order: int = 2, value: str = "value",
                seed: str = "seed") -> dict[str, float]:
    """F-test of the model with interactions up to ``order`` against the saturated model (both blocked).

    The omitted higher-order terms are the numerator; the saturated model's residual (replicates within
    cells, after the seed block) is the denominator. A small p means the reduced model does not fit.
    """
    check_table(table, factors, value, seed)
    data, _ = _design(table, factors, value, seed)
    blocked = data["block"].nunique() > 1
    full = smf.ols(_formula(len(factors), len(factors), blocked), data=data)
    _check_estimable(full, "lack_of_fit (the saturated model)")
    reduced = smf.ols(_formula(len(factors), order, blocked), data=data).fit()
    test = anova_lm(reduced, full.fit()).iloc[1]
    return {"order": order, "F": float(test["F"]), "df_num": float(test["df_diff"]),
            "df_den": float(test["df_resid"]), "p_value": float(test["Pr(>F)"])}


class _CellMeans:
    """The cell-means model (every cell a free mean, seeds as blocks) over the cells some contrasts need."""

    def __init__(self, table: pd.DataFrame, factors: list[str], cells: set[tuple], value: str, seed: str):
        keys = list(zip(*(table[f].map(str) for f in factors)))
        if missing := [c for c in sorted(cells) if c not in set(keys)]:
            raise ValueError(f"cell {text_of(dict(zip(factors, missing[0])))} is missing from the table "
                             f"({len(missing)} of the {len(cells)} cells needed)")
        self.codes = {cell: f"c{j}" for j, cell in enumerate(sorted(cells))}
        keep = np.array([key in cells for key in keys])
        data = pd.DataFrame({"cell": [self.codes[k] for k in itertools.compress(keys, keep)],
                             "block": _levels(table.loc[keep, seed]),
                             "y": table.loc[keep, value].to_numpy(dtype=float)})
        model = smf.ols("y ~ 0 + C(cell)" + (" + C(block)" if data["block"].nunique() > 1 else ""), data=data)
        _check_estimable(model, "cell means")
        self.results = model.fit()
        self.names = list(self.results.params.index)

    def row(self, weights: dict[tuple, float]) -> np.ndarray:
        """A contrast over cells as a row over the model's parameters."""
        r = np.zeros(len(self.names))
        for cell, w in weights.items():
            r[self.names.index(f"C(cell)[{self.codes[cell]}]")] += w
        return r


def _corners(factors, table, start, end, at):
    """(moved, corner): the factors that differ, and a function subset -> {cell: weight} for the cell with
    ``subset`` at end levels and the other moved ones at start levels, averaged over unfixed factors."""
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
    combos = list(itertools.product(*[list(_levels(table[f]).categories) for f in averaged]))

    def corner(subset: frozenset) -> dict[tuple, float]:
        fixed = {f: str(end[f] if f in subset else start[f]) for f in moved} | {f: str(v) for f, v in held.items()}
        return {tuple({**fixed, **dict(zip(averaged, c))}[f] for f in factors): 1 / len(combos) for c in combos}
    return moved, corner


def _key(factors: list[str], levels: dict) -> tuple:
    """A cell's key for _CellMeans: its levels as text, in the order of ``factors``."""
    return tuple(str(levels[f]) for f in factors)


def _combine(corner, *terms: tuple[float, frozenset]) -> dict[tuple, float]:
    w: dict[tuple, float] = {}
    for coef, subset in terms:
        for cell, share in corner(subset).items():
            w[cell] = w.get(cell, 0.0) + coef * share
    return w


def corner_effects(table: pd.DataFrame, factors: list[str], start: dict, end: dict, at: dict | None = None,
                   value: str = "value", seed: str = "seed", confidence: float = 1 - ALPHA) -> pd.DataFrame:
    """Each differing factor switched alone, start level -> end level, at the start corner and at the end corner.

    With no interactions the two agree; where they differ, the higher-order terms act.
    """
    check_table(table, factors, value, seed)
    moved, corner = _corners(factors, table, start, end, at)
    everything = frozenset(moved)
    contrasts, labels = [], []
    for f in moved:
        contrasts.append(_combine(corner, (1.0, frozenset({f})), (-1.0, frozenset())))
        contrasts.append(_combine(corner, (1.0, everything), (-1.0, everything - {f})))
        labels += [(f, "alone, from start"), (f, "last, into end")]
    model = _CellMeans(table, factors, set().union(*contrasts), value, seed)
    est = _contrasts(model.results, [model.row(w) for w in contrasts], confidence)
    return pd.concat([pd.DataFrame(labels, columns=["factor", "where"]), est], axis=1)


def gap_changes(table: pd.DataFrame, factors: list[str], arm: str, reference: str, across: str,
                order: list[str] | None = None, value: str = "value", seed: str = "seed",
                confidence: float = 1 - ALPHA) -> pd.DataFrame:
    """How each arm's gap to the reference changes across the levels of one factor (depth, budget).

    ``arm`` is the factor whose levels are the arms, ``reference`` its reference level. For each other arm,
    at each combination of the remaining factors, the gap (arm - reference, the sign of every difference the
    report shows) at each later level of ``across`` minus the gap at its first level: a difference of differences of four cells, so a contrast
    of one cell-means model with the seed as a block (the same pairing as the gaps themselves). ``order``
    gives the levels of ``across`` as the study lists them (ResNet-tiny before resnet20); else by value.
    """
    check_table(table, factors, value, seed)
    levels = {f: list(_levels(table[f]).categories) for f in factors}
    if order is not None:  # the study's order first; a level it does not list keeps its place by value after them
        listed = [str(v) for v in order if str(v) in levels[across]]
        levels[across] = listed + [lv for lv in levels[across] if lv not in listed]
    if reference not in levels[arm]:
        raise ValueError(f"reference level {reference!r} is not a level of {arm!r}: {levels[arm]}")
    held = [f for f in factors if f not in (arm, across)]
    first, labels, contrasts = levels[across][0], [], []
    for level in (lv for lv in levels[arm] if lv != reference):
        for combo in itertools.product(*[levels[f] for f in held]):
            fixed = dict(zip(held, combo))
            gap_at = {at: {_key(factors, fixed | {arm: level, across: at}): 1.0,
                           _key(factors, fixed | {arm: reference, across: at}): -1.0} for at in levels[across]}
            for later in levels[across][1:]:
                gap_first, gap_later = gap_at[first], gap_at[later]
                change = gap_later | {c: -w for c, w in gap_first.items()}
                labels.append({arm: level, **fixed, "from": first, "to": later})
                contrasts += [gap_first, gap_later, change]
    model = _CellMeans(table, factors, set().union(*contrasts), value, seed)
    est = _contrasts(model.results, [model.row(w) for w in contrasts], confidence)
    gaps_first, gaps_later, changes = (est.iloc[i::3].reset_index(drop=True) for i in range(3))
    out = pd.DataFrame(labels)
    for name, gaps in (("gap_first", gaps_first), ("gap_later", gaps_later)):
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = gaps["estimate"], gaps["ci_low"], gaps["ci_high"]
    return pd.concat([out, changes], axis=1)


def fieller(a: float, g: float, v_aa: float, v_ag: float, v_gg: float, t: float) -> tuple[float, float]:
    """Fieller's interval for a / g from estimates with (co)variances; (nan, nan) when it is unbounded.

    The set of ratios r with (a - r g)^2 <= t^2 Var(a - r g) is a quadratic inequality in r; it is a
    bounded interval exactly when g itself is significant at this level (g^2 > t^2 Var(g)).
    """
    qa, qb, qc = g * g - t * t * v_gg, -2 * (a * g - t * t * v_ag), a * a - t * t * v_aa
    if qa <= 0:
        return math.nan, math.nan
    root = math.sqrt(max(qb * qb - 4 * qa * qc, 0.0))
    return (-qb - root) / (2 * qa), (-qb + root) / (2 * qa)


def gap_attribution(table: pd.DataFrame, factors: list[str], start: dict, end: dict, at: dict | None = None,
                    value: str = "value", seed: str = "seed", confidence: float = 1 - ALPHA) -> pd.DataFrame:
    """Shapley split of mean(end) - mean(start) over the factors that differ, as cell-mean contrasts."""
    check_table(table, factors, value, seed)
    moved, corner = _corners(factors, table, start, end, at)
    # Shapley value of factor i: the average over all orders of the change from switching i from its start
    # level to its end level, i.e. sum over subsets S of the others of |S|!(k-|S|-1)!/k! * (v(S+i) - v(S)).
    k, contrasts = len(moved), []
    for f in moved:
        terms = []
        for size in range(k):
            weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            for s in itertools.combinations([g for g in moved if g != f], size):
                terms += [(weight, frozenset(s) | {f}), (-weight, frozenset(s))]
        contrasts.append(_combine(corner, *terms))
    contrasts.append(_combine(corner, (1.0, frozenset(moved)), (-1.0, frozenset())))  # the gap itself, last
    model = _CellMeans(table, factors, set().union(*contrasts), value, seed)
    rows = np.vstack([model.row(w) for w in contrasts])
    est = _contrasts(model.results, list(rows), confidence)
    cov = rows @ np.asarray(model.results.cov_params()) @ rows.T
    t = stats.t.ppf((1 + confidence) / 2, model.results.df_resid)
    g = est.iloc[-1]
    out = est.iloc[:-1].rename(columns={"estimate": "shapley"})
    out.insert(0, "factor", moved)
    out.insert(1, "start", [start[f] for f in moved])
    out.insert(2, "end", [end[f] for f in moved])
    out["share"] = out["shapley"] / g["estimate"]
    bounds = [fieller(a, g["estimate"], cov[i, i], cov[i, -1], cov[-1, -1], t) for i, a in enumerate(out["shapley"])]
    out["share_ci_low"], out["share_ci_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
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
    unclear_gap = first["gap_ci_low"] <= 0 <= first["gap_ci_high"]
    if unclear_gap:
        lines[0] += ": not clearly different from zero, so the shares below mean little"
    for _, r in attribution.iterrows():
        move = f"{names.get(r['factor'], r['factor'])} ({r['start']} -> {r['end']})"
        if unclear_gap or pd.isna(r["share_ci_low"]):  # the share of a gap that may be zero is unbounded
            lines.append(f"{move} contributes {r['shapley']:+.4g} ({ci} {r['ci_low']:+.4g} to {r['ci_high']:+.4g})")
            continue
        interval = f"({ci}, Fieller: {pct(r['share_ci_low'])} to {pct(r['share_ci_high'])})"
        if r["share"] >= 0:
            line = f"{move} closes {pct(r['share'])} of {gap_label} {interval}"
        else:
            line = f"{move} works against closing {gap_label}: {pct(r['share'])} {interval}"
        if r["ci_low"] <= 0 <= r["ci_high"]:
            line += ": no clear effect"
        lines.append(line)
    return lines
