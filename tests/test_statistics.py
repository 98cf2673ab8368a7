"""dyt_lab.study.statistics on synthetic seed tables drawn from a known linear model."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dyt_lab.study.statistics import (
    attribution_sentences,
    factorial_effects,
    gap_attribution,
    paired_differences,
    summarize,
)

FACTORS = ["center", "scale", "squash", "lr"]
LEVELS = {"center": ["none", "batch"], "scale": ["alpha", "batch_std"], "squash": ["tanh", "none"],
          "lr": [0.001, 0.01]}
SEED_SHIFT = {0: -0.01, 1: 0.0, 2: 0.015}  # a block effect every configuration shares
START = {"center": "none", "scale": "alpha", "squash": "tanh"}  # DyT's cell
END = {"center": "batch", "scale": "batch_std", "squash": "none"}  # BN's cell


def truth(row, interaction: float = 0.04, mains: tuple = (0.02, 0.10, 0.0, 0.03)) -> float:
    """Noiseless mean: main effects for center, scale, (null) squash, lr, and a center x scale interaction."""
    c, s = row["center"] == "batch", row["scale"] == "batch_std"
    return (0.80 + mains[0] * c + mains[1] * s + mains[2] * (row["squash"] == "none")
            + mains[3] * (row["lr"] == 0.01) + interaction * (c and s))


def make_table(noise: float = 0.004, seed: int = 0, **kw) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [dict(zip(FACTORS, cfg), seed=s) for cfg in itertools.product(*LEVELS.values()) for s in SEED_SHIFT]
    table = pd.DataFrame(rows)
    table["mu"] = table.apply(lambda r: truth(r, **kw), axis=1)
    table["value"] = table["mu"] + table["seed"].map(SEED_SHIFT) + rng.normal(0, noise, len(table))
    return table


def cell(table: pd.DataFrame, config: dict) -> pd.DataFrame:
    return table[np.logical_and.reduce([table[f] == v for f, v in config.items()])]


def test_summarize_matches_scipy_t_interval():
    table = make_table()
    out = summarize(table, FACTORS)
    assert list(out.columns) == [*FACTORS, "n", "mean", "std", "ci_low", "ci_high"]
    assert len(out) == 16 and out["mean"].is_monotonic_decreasing
    for _, r in out.iterrows():
        x = cell(table, {f: r[f] for f in FACTORS})["value"].to_numpy()
        low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert r["n"] == 3 and r["std"] == pytest.approx(x.std(ddof=1))
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high))


def test_paired_differences_match_hand_computation():
    table = make_table()
    ref = {"center": "none", "scale": "alpha", "squash": "tanh", "lr": 0.001}
    out = paired_differences(table, FACTORS, ref)
    assert list(out.columns) == [*FACTORS, "n_pairs", "mean_diff", "std_diff", "ci_low", "ci_high",
                                 "ref_std", "verdict"]
    a = cell(table, ref).set_index("seed")["value"]
    for other, verdict in [({"center": "batch", "scale": "batch_std", "squash": "none", "lr": 0.01}, "better"),
                           ({"center": "none", "scale": "alpha", "squash": "none", "lr": 0.001}, None)]:
        d = cell(table, other).set_index("seed")["value"] - a
        r = cell(out, other).iloc[0]
        half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
        assert r["n_pairs"] == 3 and r["mean_diff"] == pytest.approx(d.mean())
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
        expected = verdict or ("no difference" if abs(d.mean()) <= half else "better" if d.mean() > 0 else "worse")
        assert r["verdict"] == expected
    assert cell(out, ref)["verdict"].item() == "reference"
    assert out["ref_std"].iloc[0] == pytest.approx(a.std(ddof=1))
    assert paired_differences(table, FACTORS, ref, higher_is_better=False)["verdict"].iloc[0] == "worse"


def test_paired_differences_single_factor():
    table = cell(make_table(), START)  # only lr varies
    out = paired_differences(table, ["lr"], {"lr": 0.001}).set_index("lr")
    assert out.loc[0.01, "verdict"] == "better" and out.loc[0.001, "verdict"] == "reference"


def marginal(table: pd.DataFrame, by: list[str]) -> pd.Series:
    return table.groupby(by)["mu"].mean()


def test_factorial_effects_recover_exact_effects_without_noise():
    table = make_table(noise=1e-9)
    effects, anova = factorial_effects(table, FACTORS)
    assert list(effects.columns) == ["term", "kind", "level", "estimate", "std_err", "ci_low", "ci_high", "p_value"]
    grand = table["mu"].mean()
    main = effects[effects["kind"] == "main"]
    for _, r in main.iterrows():  # sum-coded main effect = marginal mean of the level - grand mean
        level = next(v for v in LEVELS[r["term"]] if str(v) == r["level"])
        assert r["estimate"] == pytest.approx(marginal(table, [r["term"]])[level] - grand, abs=1e-6)
    inter = effects[(effects["kind"] == "interaction") & (effects["term"] == "center:scale")]
    m2, mc, ms = marginal(table, ["center", "scale"]), marginal(table, ["center"]), marginal(table, ["scale"])
    for _, r in inter.iterrows():
        c, s = r["level"].split(":")
        assert r["estimate"] == pytest.approx(m2[c, s] - mc[c] - ms[s] + grand, abs=1e-6)
    diff = effects[effects["kind"] == "difference"].set_index("term")
    assert diff.loc["center", "level"] == "none - batch"  # levels sort as text: batch < none
    assert diff.loc["center", "estimate"] == pytest.approx(-(0.02 + 0.04 / 2), abs=1e-6)
    assert diff.loc["scale", "estimate"] == pytest.approx(0.10 + 0.04 / 2, abs=1e-6)
    assert diff.loc["lr", "level"] == "0.01 - 0.001" and diff.loc["lr", "estimate"] == pytest.approx(0.03)
    assert set(anova["term"]) >= {"center", "center:scale", "seed", "Residual"}


def test_factorial_effects_intervals_and_anova_with_noise():
    table = make_table(seed=2)  # one draw; coverage over many draws is the next test
    effects, anova = factorial_effects(table, FACTORS)
    diff = effects[effects["kind"] == "difference"].set_index("term")
    for term, true in [("center", -0.04), ("scale", 0.12), ("squash", 0.0), ("lr", 0.03)]:
        assert diff.loc[term, "ci_low"] <= true <= diff.loc[term, "ci_high"], term
    inter = effects[(effects["term"] == "center:scale") & (effects["level"] == "batch:batch_std")].iloc[0]
    assert inter["ci_low"] <= 0.01 <= inter["ci_high"]  # 0.04 / 4 in sum coding
    aov = anova.set_index("term")
    assert list(anova.columns) == ["term", "sum_sq", "df", "F", "p_value", "eta_sq"]
    assert (aov.loc[["center", "scale", "lr", "center:scale", "seed"], "p_value"] < 1e-3).all()
    assert aov.loc["squash", "p_value"] > 0.05
    assert aov["eta_sq"].sum() == pytest.approx(1.0) and aov.loc["scale", "eta_sq"] > 0.5


def test_interval_coverage_and_false_positives_over_replicates():
    truths = {"center": -0.04, "scale": 0.12, "squash": 0.0, "lr": 0.03}
    covered, false_pos = [], []
    for rep in range(20):
        effects, anova = factorial_effects(make_table(seed=100 + rep), FACTORS)
        diff = effects[effects["kind"] == "difference"].set_index("term")
        covered += [diff.loc[t, "ci_low"] <= v <= diff.loc[t, "ci_high"] for t, v in truths.items()]
        aov = anova.set_index("term")["p_value"]
        false_pos += [aov[t] < 0.05 for t in ["squash", "center:squash", "scale:lr", "squash:lr"]]
        assert (aov[["center", "scale", "lr", "center:scale"]] < 1e-3).all()
    assert 0.88 <= np.mean(covered) <= 1.0 and np.mean(false_pos) <= 0.12


def test_factorial_effects_three_level_factor():
    rng = np.random.default_rng(3)
    table = pd.DataFrame([{"center": c, "width": w, "seed": s} for c in ["none", "batch"]
                          for w in ["a", "b", "c"] for s in range(3)])
    table["value"] = table["width"].map({"a": 0.0, "b": 0.3, "c": 0.6}) + rng.normal(0, 0.01, len(table))
    effects, anova = factorial_effects(table, ["center", "width"])
    width = effects[effects["term"] == "width"].set_index("level")["estimate"]
    assert width.to_dict() == pytest.approx({"a": -0.3, "b": 0.0, "c": 0.3}, abs=0.03)
    assert len(effects[effects["term"] == "center:width"]) == 6
    assert "width" not in set(effects.loc[effects["kind"] == "difference", "term"])
    assert anova.set_index("term").loc["width", "df"] == 2


def test_gap_attribution_sums_to_gap_and_matches_additive_effects():
    table = make_table(noise=1e-9, interaction=0.0)
    out = gap_attribution(table, FACTORS, START, END)
    assert list(out.columns) == ["factor", "start", "end", "shapley", "std_err", "ci_low", "ci_high", "p_value",
                                 "share", "share_ci_low", "share_ci_high", "gap", "gap_ci_low", "gap_ci_high",
                                 "confidence"]
    raw_gap = cell(table, END)["value"].mean() - cell(table, START)["value"].mean()  # averaged over lr
    assert out["gap"].iloc[0] == pytest.approx(raw_gap) and out["shapley"].sum() == pytest.approx(raw_gap)
    assert out["share"].sum() == pytest.approx(1.0)
    # Additive truth: each Shapley value is that factor's main effect from start level to end level.
    assert out.set_index("factor")["shapley"].to_dict() == pytest.approx(
        {"center": 0.02, "scale": 0.10, "squash": 0.0}, abs=1e-6)


def test_gap_attribution_with_noise_interaction_and_held_level():
    table = make_table()
    out = gap_attribution(table, FACTORS, START, END, at={"lr": 0.01}).set_index("factor")
    raw_gap = cell(table, {**END, "lr": 0.01})["value"].mean() - cell(table, {**START, "lr": 0.01})["value"].mean()
    assert out["shapley"].sum() == pytest.approx(raw_gap)
    assert out["gap_ci_low"].iloc[0] <= 0.16 <= out["gap_ci_high"].iloc[0]
    for factor, true in {"center": 0.02 + 0.02, "scale": 0.10 + 0.02, "squash": 0.0}.items():
        assert out.loc[factor, "ci_low"] <= true <= out.loc[factor, "ci_high"], factor
    lines = attribution_sentences(out.reset_index(), "the BN-DyT gap", names={"center": "centering"})
    assert len(lines) == 4 and lines[0].startswith("the BN-DyT gap: +0.16")
    assert lines[1].startswith("centering (none -> batch) closes 2") and "95% CI" in lines[1]
    assert lines[3].endswith("no clear effect") and not lines[2].endswith("no clear effect")


def test_gap_attribution_pure_interaction_splits_in_half():
    table = make_table(noise=1e-9, interaction=0.06, mains=(0.0, 0.0, 0.0, 0.0))
    out = gap_attribution(table, FACTORS, START, END).set_index("factor")
    assert out["shapley"].to_dict() == pytest.approx({"center": 0.03, "scale": 0.03, "squash": 0.0}, abs=1e-6)


def test_errors_name_the_problem():
    table = make_table()
    with pytest.raises(ValueError, match=r"reference center=none, scale=alpha.* valid ones: .*\(and 12 more\)"):
        paired_differences(table, FACTORS, {"center": "none", "scale": "alpha", "squash": "tanh", "lr": 0.5})
    holed = table[~((table["center"] == "batch") & (table["scale"] == "alpha") & (table["squash"] == "tanh"))]
    with pytest.raises(ValueError, match=r"cell center=batch, scale=alpha, squash=tanh, lr=0.001 is missing"):
        gap_attribution(holed, FACTORS, START, END)
    small = cell(table, {"squash": "tanh", "lr": 0.001, "seed": 0})  # 2x2 cells, one seed
    with pytest.raises(ValueError, match="no residual degrees of freedom"):
        factorial_effects(small, ["center", "scale"])
    with pytest.raises(ValueError, match="repeat a"):
        summarize(table, ["center"])
    with pytest.raises(ValueError, match="no gap"):
        gap_attribution(table, FACTORS, START, START)
