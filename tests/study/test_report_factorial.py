"""``study/report/factorial.py`` on synthetic seed tables drawn from a known linear model (tests/study/synthetic.py):
factorial effects and their intervals, the gap's attribution to factors, the saturated model and its lack of
fit, corner effects, Fieller's interval, shares, and changes of the gap across a factor."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dyt_lab.study.report.factorial import (
    attribution_sentences,
    corner_effects,
    factorial_effects,
    fieller,
    gap_attribution,
    lack_of_fit,
)
from dyt_lab.study.report.seed_runs import differences_to
from dyt_lab.study.report.statistics import summarize
from tests.study.synthetic import END, FACTORS, LEVELS, START, cell, depth_table, make_table


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
        differences_to(table, FACTORS, {"center": "none", "scale": "alpha", "squash": "tanh", "lr": 0.5}, True, 0.005)
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


def test_the_saturated_model_recovers_a_three_way_interaction_and_lack_of_fit_sees_it():
    table = make_table(noise=0.004, seed=4, three_way=0.06)
    effects, anova = factorial_effects(table, FACTORS)  # saturated by default
    aov = anova.set_index("term")
    assert "center:scale:squash:lr" in aov.index and aov.loc["center:scale:squash", "p_value"] < 1e-3
    three = effects[(effects["term"] == "center:scale:squash") & (effects["level"] == "batch:batch_std:none")]
    # a 2x2x2 interaction of size d in one corner is d/8 in sum coding
    assert three["ci_low"].item() <= 0.06 / 8 <= three["ci_high"].item()
    lof = lack_of_fit(table, FACTORS, order=2)
    assert lof["df_num"] == 5 and lof["df_den"] == 30 and lof["p_value"] < 1e-3  # 4 three-way + 1 four-way
    assert lack_of_fit(make_table(seed=4), FACTORS, order=2)["p_value"] > 0.05  # no such term: it fits
    with pytest.raises(ValueError, match="no residual degrees of freedom"):
        lack_of_fit(cell(table, {"seed": 0}), FACTORS)  # one seed: no replicates to judge the fit by


def test_corner_effects_agree_without_interactions_and_show_them_otherwise():
    additive = corner_effects(make_table(noise=1e-9, interaction=0.0), FACTORS, START, END).set_index(["factor", "where"])
    for f, true in {"center": 0.02, "scale": 0.10, "squash": 0.0}.items():
        assert additive.loc[(f, "alone, from start"), "estimate"] == pytest.approx(true, abs=1e-6)
        assert additive.loc[(f, "last, into end"), "estimate"] == pytest.approx(true, abs=1e-6)
    table = make_table(noise=1e-9, interaction=0.0, three_way=0.06)
    corner = corner_effects(table, FACTORS, START, END).set_index(["factor", "where"])
    assert corner.loc[("squash", "alone, from start"), "estimate"] == pytest.approx(0.0, abs=1e-6)
    assert corner.loc[("squash", "last, into end"), "estimate"] == pytest.approx(0.06, abs=1e-6)


def test_fieller_is_the_naive_interval_when_the_gap_is_known_and_unbounded_when_it_may_be_zero():
    t = stats.t.ppf(0.975, 30)
    low, high = fieller(0.05, 0.10, 0.01 ** 2, 0.0, 0.0, t)
    assert (low, high) == pytest.approx(((0.05 - t * 0.01) / 0.10, (0.05 + t * 0.01) / 0.10))
    assert all(np.isnan(fieller(0.05, 0.01, 1e-4, 0.0, 1e-4, t)))  # the gap is within noise of 0


def test_share_intervals_cover_the_true_split_in_simulated_studies():
    """200 simulated studies with a known split (a 2-way and a 3-way interaction, noise comparable to the
    smaller shares): each factor's 95% Fieller interval covers its true share 90-99% of the time."""
    kw = {"interaction": 0.04, "three_way": 0.03}
    truth_split = gap_attribution(make_table(noise=1e-9, **kw), FACTORS, START, END).set_index("factor")["share"]
    hits = {f: [] for f in truth_split.index}
    for rep in range(200):
        out = gap_attribution(make_table(noise=0.015, seed=1000 + rep, **kw), FACTORS, START, END).set_index("factor")
        for f, true in truth_split.items():
            hits[f].append(out.loc[f, "share_ci_low"] <= true <= out.loc[f, "share_ci_high"])
    rates = {f: np.mean(h) for f, h in hits.items()}
    assert all(0.90 <= r <= 0.99 for r in rates.values()), rates


def test_gap_changes_are_paired_differences_of_gaps_and_find_a_planted_change():
    from dyt_lab.study.report.factorial import gap_changes

    table = depth_table(change=0.03)
    factors = ["name, alpha_init", "preset"]
    out = gap_changes(table, factors, "name, alpha_init", "batchnorm, -", "preset", order=["tiny", "deep"])
    assert list(out["name, alpha_init"]) == ["dyt, 0.5", "dyt, 1.0"] and set(out["from"] + out["to"]) == {"tinydeep"}
    by_seed = table.pivot_table(index="seed", columns=factors, values="value")
    for row in out.to_dict("records"):  # the same contrast per seed, then averaged: the estimate, independently
        arm = row["name, alpha_init"]
        per_seed = ((by_seed[(arm, "deep")] - by_seed[("batchnorm, -", "deep")])
                    - (by_seed[(arm, "tiny")] - by_seed[("batchnorm, -", "tiny")]))  # arm - reference, as Δ
        assert row["estimate"] == pytest.approx(per_seed.mean())
        assert row["gap_first"] == pytest.approx((by_seed[(arm, "tiny")] - by_seed[("batchnorm, -", "tiny")]).mean())
    planted, null = out.iloc[0], out.iloc[1]
    assert planted["ci_low"] < -0.03 < planted["ci_high"] and planted["p_value"] < 0.001
    assert null["ci_low"] < 0 < null["ci_high"]
    reversed_order = gap_changes(table, factors, "name, alpha_init", "batchnorm, -", "preset")  # by value: deep first
    assert reversed_order["from"].iloc[0] == "deep" and reversed_order["estimate"].iloc[0] == pytest.approx(-planted["estimate"])
    unlisted = gap_changes(table, factors, "name, alpha_init", "batchnorm, -", "preset", order=["tiny", "huge"])
    assert list(unlisted["to"]) == ["deep", "deep"]  # a level the order omits still comes, after the listed ones
    with pytest.raises(ValueError, match="'layernorm, -' is not a level"):
        gap_changes(table, factors, "name, alpha_init", "layernorm, -", "preset")
