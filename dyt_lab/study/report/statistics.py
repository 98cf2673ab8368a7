"""Replicated-seed statistics: configuration summaries, paired comparisons and their verdicts.

Every function takes a pandas DataFrame with one row per finished seed run: the factor columns (strings
or numbers), a seed column (the same seeds for every configuration, so runs are paired by seed) and a
value column. Factorial effects and the split of a gap are in ``factorial.py``.

What a reviewer asks of these numbers, and where each is answered:

- *An interval valid for the n you have.* A t-interval, never a normal one. A configuration's spread is
  pooled over the study (more degrees of freedom) when Bartlett's test (scipy) finds no sign that the
  spreads differ; otherwise each configuration uses its own. An
  interval that would have zero width (two seeds that agree exactly, and nothing to pool) is "too few
  seeds", not an interval. Bounds never leave the metric's range (``bounds``, (0, 1) for accuracies).
- *Equivalence is tested*, by two one-sided tests (TOST) against a margin ``m``, not read from an
  interval that contains 0. A comparison is ``better``, ``worse``, ``equivalent`` (within +-m) or
  ``inconclusive``.
- *Many comparisons*: p-values are Holm-adjusted over the table's family (statsmodels' multipletests);
  both the raw and the adjusted p are returned.
- *Pairs*: two arms' runs pair by seed, on the seeds both ran (``paired_by_seed``); every paired comparison
  of the report, a confirmation and ``study compare`` goes through it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from dyt_lab.study.definition.margin import DEFAULT_MARGIN, check_margin

ALPHA = 0.05  # the level of every test and verdict; intervals are (1 - ALPHA)
VERDICTS = ("better", "worse", "equivalent", "inconclusive", "too few seeds")


def check_table(table: pd.DataFrame, factors: list[str], value: str, seed: str) -> None:
    """Raise a ValueError naming what is wrong with a seed-run table (missing columns, NaNs, repeats)."""
    missing = [c for c in [*factors, seed, value] if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table (it has {list(table.columns)})")
    if table[value].isna().any():
        # A diverged run is a result too: silently dropping it would flatter the configuration.
        raise ValueError(f"{int(table[value].isna().sum())} rows have no {value!r}: drop or fill them first")
    dup = table.duplicated([*factors, seed])
    if dup.any():
        first = text_of(table.loc[dup, [*factors, seed]].iloc[0].to_dict())
        raise ValueError(f"{int(dup.sum())} rows repeat a (configuration, seed) pair, first: {first}")


def text_of(config: dict) -> str:
    """``center=batch, lr=0.002``: a configuration as people read it in an error or a table."""
    return ", ".join(f"{k}={v}" for k, v in config.items())


def _spreads_differ(groups: list[np.ndarray]) -> bool:
    """Bartlett: do these groups' variances differ (p < ALPHA)? False where it cannot be tested.

    Bartlett rather than Levene or Brown-Forsythe: with the 2-5 seeds of a study, their absolute
    deviations leave almost no power (measured here: sd 0.6 against 6.5 points, 3 seeds each, was not
    flagged), and normal within-cell errors are the pooled t-interval's own assumption. A group whose
    seeds agree exactly is left out of the test (its variance's log is -inf) and takes the pooled one.
    """
    usable = [g for g in groups if len(g) >= 2 and np.ptp(g) > 0]
    if len(usable) < 2:
        return False
    return bool(stats.bartlett(*usable).pvalue < ALPHA)


def _pool(groups: list[np.ndarray]) -> tuple[float, float]:
    """Pooled variance of groups around their own means, and its degrees of freedom."""
    df = sum(len(g) - 1 for g in groups)
    ss = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    return (ss / df, df) if df > 0 else (math.nan, 0.0)


def _spread(groups: list[np.ndarray]) -> list[tuple[float, float, str]]:
    """Each group's (variance, degrees of freedom, how): pooled when the spreads agree, else its own."""
    pooled_var, pooled_df = _pool(groups)
    if pooled_df > 0 and len(groups) > 1 and not _spreads_differ(groups):
        return [(pooled_var, pooled_df, "pooled")] * len(groups)
    return [(float(g.var(ddof=1)), len(g) - 1.0, "own") if len(g) >= 2 else (math.nan, 0.0, "own") for g in groups]


# Metrics are logged as float32: seeds that agree (or differ by the same number of images) come back as values
# or differences about 1e-8 apart, a "spread" that gives a zero-width interval and makes Bartlett refuse to pool.
TIE = 4 * float(np.finfo(np.float32).eps)


def _settled(g: np.ndarray) -> np.ndarray:
    """A group whose values agree to float32 rounding made exactly equal: the zero spread it is."""
    scale = max(float(np.abs(g).max()), 1.0) if len(g) else 1.0
    return np.full_like(g, g.mean()) if len(g) > 1 and np.ptp(g) <= TIE * scale else g


def _clip(low, high, bounds):
    return (low, high) if bounds is None else (np.clip(low, *bounds), np.clip(high, *bounds))


def summarize(table: pd.DataFrame, factors: list[str], value: str = "value", seed: str = "seed",
              confidence: float = 1 - ALPHA, bounds: tuple[float, float] | None = None) -> pd.DataFrame:
    """Per configuration: n, mean, std (ddof=1), t-interval of the mean and how its spread was estimated.

    ``interval`` is ``pooled`` (the study's pooled spread), ``own`` (this configuration's), or
    ``too few seeds`` (no interval: one seed, or a zero spread with nothing to pool). Best mean first.
    """
    check_table(table, factors, value, seed)
    grouped = table.groupby(list(factors), sort=False)[value]
    out = grouped.agg(n="count", mean="mean", std="std").reset_index()
    spreads = _spread([_settled(np.asarray(g, dtype=float)) for _, g in grouped])
    var = np.array([s[0] for s in spreads])
    df = np.array([s[1] for s in spreads])
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf((1 + confidence) / 2, df) * np.sqrt(var / out["n"].to_numpy())
    usable = np.isfinite(half) & (half > 0)
    out["ci_low"], out["ci_high"] = _clip(np.where(usable, out["mean"] - half, np.nan),
                                          np.where(usable, out["mean"] + half, np.nan), bounds)
    out["interval"] = np.where(usable, [s[2] for s in spreads], "too few seeds")
    return out.sort_values("mean", ascending=False, ignore_index=True)


def detectable(se, df, family_size: int, power: float = 0.8) -> np.ndarray:
    """The true difference the two-sided test finds with ``power`` at ALPHA / family_size (Holm's first, strictest
    step, so it holds after Holm): (t_{1-a/2, df} + t_{power, df}) * se."""
    a = ALPHA / max(family_size, 1)
    with np.errstate(invalid="ignore"):
        return (stats.t.ppf(1 - a / 2, df) + stats.t.ppf(power, df)) * np.asarray(se, dtype=float)


def equivalence_se(margin: float, family_size: int, power: float = 0.8) -> float:
    """The standard error at which TOST within +-margin passes with ``power`` for a true difference of 0:
    margin / (z_{1-a} + z_{(1+power)/2}), a = ALPHA / family_size (the usual normal approximation: both one-sided
    tests must pass, so each takes half of the miss rate; normal quantiles, since a planned design's df is unknown)."""
    a = ALPHA / max(family_size, 1)
    return margin / (stats.norm.ppf(1 - a) + stats.norm.ppf((1 + power) / 2))


def verdicts(frame: pd.DataFrame, margin: float, higher_is_better: bool = True, alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjust ``p_diff`` and ``p_tost`` over the frame's rows and add each row's verdict at level ``alpha``.

    ``frame`` has mean_diff, std_err, df, p_diff and p_tost per comparison (rows with NaN p are not in
    the family). Equivalence wins over a difference: a significant gap smaller than the margin is
    ``equivalent``, which is what a reader needs to know. A sequential confirmation's looks pass the
    level each look may spend (``engine/sequential.py``).
    """
    out = frame.copy()
    for column in ("p_diff", "p_tost"):
        valid = out[column].notna().to_numpy()
        adjusted = np.full(len(out), np.nan)
        if valid.any():
            adjusted[valid] = multipletests(out.loc[valid, column], alpha=alpha, method="holm")[1]
        out[f"{column}_holm"] = adjusted
    gain = out["mean_diff"] if higher_is_better else -out["mean_diff"]
    out["verdict"] = np.select(
        [out["p_diff"].isna(), out["p_tost_holm"] < alpha, (out["p_diff_holm"] < alpha) & (gain > 0),
         out["p_diff_holm"] < alpha], ["too few seeds", "equivalent", "better", "worse"], "inconclusive")
    out["margin"] = margin
    if {"std_err", "df"} <= set(out.columns):  # what an inconclusive row could have seen, after Holm
        out["mde"] = detectable(out["std_err"], out["df"], int(out["p_diff"].notna().sum()))
    if {"std_diff"} <= set(out.columns):  # seeds that would decide it at the margin, images fixed as they were
        target = equivalence_se(margin, int(out["p_diff"].notna().sum()))
        out["seeds_needed"] = [math.nan if not np.isfinite(sd) else math.inf if target <= 0 or sd / target > 1e9
                               else max(2, math.ceil((sd / target) ** 2)) for sd in out["std_diff"]]
    return out


def t_tests(mean, se, df, margin: float, confidence: float = 1 - ALPHA) -> dict[str, np.ndarray]:
    """Two-sided t-test of 0 and TOST of +-margin for estimates with standard error ``se`` and ``df``.

    The same arithmetic as statsmodels' ``ttest_rel``/``ttost_paired`` (a test checks it), written once
    here because the standard error may come from a pooled spread those functions cannot be given.
    """
    mean, se, df = (np.asarray(x, dtype=float) for x in (mean, se, df))
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (se > 0) & (df > 0)
        t0 = np.where(ok, mean / se, np.nan)
        p_diff = np.where(ok, 2 * stats.t.sf(np.abs(t0), df), np.nan)
        p_low = stats.t.sf((mean + margin) / se, df)  # H0: difference <= -margin
        p_high = stats.t.cdf((mean - margin) / se, df)  # H0: difference >= +margin
        p_tost = np.where(ok, np.maximum(p_low, p_high), np.nan)
        half = np.where(ok, stats.t.ppf((1 + confidence) / 2, df) * se, np.nan)
    return {"p_diff": p_diff, "p_tost": p_tost, "ci_low": mean - half, "ci_high": mean + half}


def compare_pairs(differences: list[np.ndarray], confidence: float = 1 - ALPHA, higher_is_better: bool = True,
                  margin: float = DEFAULT_MARGIN) -> pd.DataFrame:
    """One family of comparisons, each given as its per-seed paired differences: estimates, tests, verdicts.

    The spread of the differences is pooled over the family when Bartlett's test finds no sign that it
    differs between comparisons (degrees of freedom: all pairs), else each uses its own (n_pairs - 1).
    A difference's interval is never cut to the metric's span: wider than the span, it says how little the pairs tell.
    """
    margin = check_margin(margin)
    groups = [_settled(np.asarray(d, dtype=float)) for d in differences]
    out = pd.DataFrame({"n_pairs": [len(g) for g in groups], "mean_diff": [g.mean() if len(g) else math.nan
                                                                          for g in groups],
                        "std_diff": [g.std(ddof=1) if len(g) > 1 else math.nan for g in groups]})
    var, df, how = zip(*_spread(groups)) if groups else ((), (), ())
    out["std_err"] = np.sqrt(np.array(var, dtype=float) / out["n_pairs"].to_numpy())
    out["df"], out["interval"] = np.array(df, dtype=float), list(how)
    tests = t_tests(out["mean_diff"], out["std_err"], out["df"], margin, confidence)
    out["ci_low"], out["ci_high"] = tests["ci_low"], tests["ci_high"]  # never cut to ±range: wide is the answer
    out["p_diff"], out["p_tost"] = tests["p_diff"], tests["p_tost"]
    out.loc[out["p_diff"].isna(), "interval"] = "too few seeds"
    return verdicts(out, margin, higher_is_better, alpha=1 - confidence)


def paired_by_seed(pairs: dict[str, tuple[pd.Series, pd.Series]], margin: float = DEFAULT_MARGIN,
                   higher_is_better: bool = True, alpha: float = ALPHA) -> pd.DataFrame:
    """Each labelled comparison (arm's values by seed, against's values by seed), arm − against on the seeds both
    ran, as one Holm family at level ``alpha`` (``compare_pairs``): the one pairing of ``study report``, its
    confirmation and ``study compare``. Adds the label and both sides' means over the paired seeds."""
    # NaN where a seed (or its value) is on one side only: only pairs count
    differences = [(arm - against).dropna() for arm, against in pairs.values()]
    out = compare_pairs([d.to_numpy() for d in differences], 1 - alpha, higher_is_better, margin)
    out.insert(0, "label", list(pairs))
    out["arm_mean"] = [arm.loc[d.index].mean() for (arm, _), d in zip(pairs.values(), differences)]
    out["against_mean"] = [against.loc[d.index].mean() for (_, against), d in zip(pairs.values(), differences)]
    return out
