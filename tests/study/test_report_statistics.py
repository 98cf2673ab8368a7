"""dyt_lab.study.report.statistics and .factorial on synthetic seed tables drawn from a known linear model."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from dyt_lab.study.definition.margin import check_margin
from dyt_lab.study.report.factorial import (
    attribution_sentences,
    corner_effects,
    factorial_effects,
    fieller,
    gap_attribution,
    lack_of_fit,
)
from dyt_lab.study.report.seed_runs import differences_to
from dyt_lab.study.report.statistics import compare_pairs, paired_by_seed, summarize, t_tests

FACTORS = ["center", "scale", "squash", "lr"]
LEVELS = {"center": ["none", "batch"], "scale": ["alpha", "batch_std"], "squash": ["tanh", "none"],
          "lr": [0.001, 0.01]}
SEED_SHIFT = {0: -0.01, 1: 0.0, 2: 0.015}  # a block effect every configuration shares
START = {"center": "none", "scale": "alpha", "squash": "tanh"}  # DyT's cell
END = {"center": "batch", "scale": "batch_std", "squash": "none"}  # BN's cell


def truth(row, interaction: float = 0.04, mains: tuple = (0.02, 0.10, 0.0, 0.03), three_way: float = 0.0) -> float:
    """Noiseless mean: main effects for center, scale, (null) squash, lr, a center x scale interaction, and
    a center x scale x squash one (the corner where BatchNorm's parts only pay off together)."""
    c, s, q = row["center"] == "batch", row["scale"] == "batch_std", row["squash"] == "none"
    return (0.80 + mains[0] * c + mains[1] * s + mains[2] * q
            + mains[3] * (row["lr"] == 0.01) + interaction * (c and s) + three_way * (c and s and q))


def make_table(noise: float = 0.004, seed: int = 0, **kw) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [dict(zip(FACTORS, cfg), seed=s) for cfg in itertools.product(*LEVELS.values()) for s in SEED_SHIFT]
    table = pd.DataFrame(rows)
    table["mu"] = table.apply(lambda r: truth(r, **kw), axis=1)
    table["value"] = table["mu"] + table["seed"].map(SEED_SHIFT) + rng.normal(0, noise, len(table))
    return table


def cell(table: pd.DataFrame, config: dict) -> pd.DataFrame:
    return table[np.logical_and.reduce([table[f] == v for f, v in config.items()])]


def test_summarize_pools_the_spread_when_the_configurations_agree_on_it():
    table = make_table()
    out = summarize(table, FACTORS)
    assert list(out.columns) == [*FACTORS, "n", "mean", "std", "ci_low", "ci_high", "interval"]
    assert len(out) == 16 and out["mean"].is_monotonic_decreasing and set(out["interval"]) == {"pooled"}
    pooled = table.groupby(FACTORS)["value"].var(ddof=1).mean()  # balanced: the mean of the cell variances
    half = stats.t.ppf(0.975, 16 * 2) * np.sqrt(pooled / 3)
    for _, r in out.iterrows():
        x = cell(table, {f: r[f] for f in FACTORS})["value"].to_numpy()
        assert r["n"] == 3 and r["std"] == pytest.approx(x.std(ddof=1))
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half))


def test_summarize_uses_each_configurations_own_spread_when_they_differ():
    table = cell(make_table(seed=1), {"squash": "tanh", "lr": 0.001}).copy()
    rng = np.random.default_rng(5)
    table = pd.concat([table.assign(seed=table["seed"] + 10 * k) for k in range(3)], ignore_index=True)  # 9 seeds
    wide = table["center"] == "none"
    table.loc[wide, "value"] += rng.normal(0, 0.05, wide.sum())  # DyT-like cells spread 10x more
    out = summarize(table, ["center", "scale"])
    assert set(out["interval"]) == {"own"}
    for _, r in out.iterrows():
        x = cell(table, {"center": r["center"], "scale": r["scale"]})["value"].to_numpy()
        low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high))


def test_one_wild_configuration_does_not_widen_the_others_with_three_seeds():
    """Seed runs of the resnet_alpha0 study (val/acc_best): alpha0 = 0.05 spreads 10x more than the rest.
    Pooling it into BatchNorm's interval made BN's [0.94, 1.00] and DyT's -3.9 points "inconclusive"."""
    runs = {"bn": [0.984, 0.986, 0.974], "dyt_a0.05": [0.538, 0.408, 0.472], "dyt_a0.5": [0.942, 0.948, 0.938],
            "dyt_a1": [0.926, 0.922, 0.936]}
    table = pd.DataFrame([{"norm": k, "seed": s, "value": v} for k, vs in runs.items() for s, v in enumerate(vs)])
    out = summarize(table, ["norm"], bounds=(0, 1)).set_index("norm")
    assert set(out["interval"]) == {"own"} and out.loc["bn", "ci_low"] > 0.95
    diff = differences_to(table, ["norm"], {"norm": "bn"}, True, 0.005).set_index("norm")
    assert diff.loc["dyt_a0.5", "verdict"] == "worse" and diff.loc["dyt_a0.5", "ci_high"] < 0


def test_two_seeds_that_agree_exactly_give_no_zero_width_interval():
    table = pd.DataFrame({"norm": ["bn", "bn"], "seed": [0, 1], "value": [0.796, 0.796]})
    out = summarize(table, ["norm"]).iloc[0]
    assert out["interval"] == "too few seeds" and np.isnan(out["ci_low"]) and np.isnan(out["ci_high"])
    pair = pd.DataFrame({"norm": ["bn", "bn", "dyt", "dyt"], "seed": [0, 1, 0, 1], "value": [0.9, 0.8, 0.85, 0.75]})
    diff = differences_to(pair, ["norm"], {"norm": "bn"}, True, 0.005).set_index("norm")
    assert diff.loc["dyt", "verdict"] == "too few seeds" and np.isnan(diff.loc["dyt", "ci_low"])
    assert diff.loc["dyt", "mean_diff"] == pytest.approx(-0.05)


def test_a_metric_at_its_ceiling_keeps_its_bounds():
    table = pd.DataFrame({"norm": ["bn"] * 3 + ["dyt"] * 3, "seed": [0, 1, 2] * 2,
                          "value": [1.0, 0.998, 1.0, 0.90, 0.97, 0.995]})
    out = summarize(table, ["norm"], bounds=(0.0, 1.0))
    assert (out["ci_high"] <= 1.0).all() and (out["ci_low"] >= 0.0).all()
    assert out.set_index("norm").loc["bn", "ci_high"] == 1.0  # the t-interval's top is above 1: clipped
    assert summarize(table, ["norm"])["ci_high"].max() > 1.0  # (without bounds it is not)
    # A difference's interval is never cut to the metric's span: where few seeds make it wider than the span, the
    # width is the answer (cut to [-1, 1], it read like a measurement in `study compare`).
    wide = compare_pairs([np.array([0.4, -0.5])], margin=0.005).iloc[0]
    assert wide["ci_low"] < -1.0 and wide["ci_high"] > 1.0


def test_t_tests_are_statsmodels_tost_and_scipys_paired_t():
    rng = np.random.default_rng(0)
    for n, shift in [(3, 0.002), (5, 0.03), (10, -0.001)]:
        x, y = rng.normal(0.9, 0.01, n), rng.normal(0.9 + shift, 0.01, n)
        d = y - x
        got = t_tests(d.mean(), d.std(ddof=1) / np.sqrt(n), n - 1, margin=0.005)
        assert got["p_tost"] == pytest.approx(ttost_paired(y, x, -0.005, 0.005)[0])
        assert got["p_diff"] == pytest.approx(stats.ttest_rel(y, x).pvalue)


def test_differences_to_the_reference_match_hand_computation_and_holm():
    table = make_table()
    ref = {"center": "none", "scale": "alpha", "squash": "tanh", "lr": 0.001}
    out = differences_to(table, FACTORS, ref, True, margin=0.005)
    assert {"n_pairs", "mean_diff", "std_err", "df", "ci_low", "ci_high", "p_diff", "p_diff_holm", "p_tost",
            "p_tost_holm", "interval", "verdict", "margin"} <= set(out.columns)
    assert len(out) == 15 and cell(out, {f: str(v) for f, v in ref.items()}).empty  # every cell but the reference
    others, text = out, table.astype({f: str for f in FACTORS})  # the levels come back as text
    assert set(others["interval"]) == {"pooled"} and (others["df"] == 15 * 2).all()
    a = cell(table, ref).set_index("seed")["value"]
    pooled = np.mean([(cell(text, {f: r[f] for f in FACTORS}).set_index("seed")["value"] - a).var(ddof=1)
                      for _, r in others.iterrows()])
    for _, r in others.iterrows():
        d = cell(text, {f: r[f] for f in FACTORS}).set_index("seed")["value"] - a
        half = stats.t.ppf(0.975, 30) * np.sqrt(pooled / 3)
        assert r["mean_diff"] == pytest.approx(d.mean())
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert others["p_diff_holm"].to_numpy() == pytest.approx(multipletests(others["p_diff"], method="holm")[1])
    assert (others["p_diff_holm"] >= others["p_diff"]).all()
    bn_cell = {"center": "batch", "scale": "batch_std", "squash": "none", "lr": "0.01"}
    bn = cell(out, bn_cell).iloc[0]
    assert bn["verdict"] == "better" and bn["p_diff_holm"] < 0.05
    squash_only = cell(out, {"center": "none", "scale": "alpha", "squash": "none", "lr": "0.001"}).iloc[0]
    assert squash_only["verdict"] in ("equivalent", "inconclusive")  # the truth is 0: never better or worse here
    assert cell(differences_to(table, FACTORS, ref, False, 0.005), bn_cell)["verdict"].item() == "worse"


def test_one_pairing_pairs_by_seed_on_the_seeds_both_ran():
    """The pairing under the report, a confirmation and study compare: arm - against on shared seeds only, both means
    over those seeds, and the family's tests those of compare_pairs on the same differences."""
    against = pd.Series([0.90, 0.92, 0.91, 0.80], index=[0, 1, 2, 3])
    arm = pd.Series([0.93, 0.95, 0.93, 0.99], index=[1, 0, 2, 9])  # seed 3 is only against's, 9 only the arm's
    tight = pd.Series([0.905, 0.921, 0.909], index=[0, 1, 2])
    out = paired_by_seed({"arm": (arm, against), "tight": (tight, against)}, margin=0.005).set_index("label")
    assert out.loc["arm", "n_pairs"] == 3 and out.loc["arm", "mean_diff"] == pytest.approx(0.08 / 3)
    assert out.loc["arm", "arm_mean"] == pytest.approx(np.mean([0.95, 0.93, 0.93]))
    assert out.loc["arm", "against_mean"] == pytest.approx(0.91)
    assert out.loc["arm", "arm_mean"] - out.loc["arm", "against_mean"] == pytest.approx(out.loc["arm", "mean_diff"])
    same = compare_pairs([np.array([0.05, 0.01, 0.02]), np.array([0.005, 0.001, -0.001])], margin=0.005)
    for column in ("mean_diff", "ci_low", "ci_high", "p_diff_holm", "p_tost_holm"):
        assert out[column].to_numpy() == pytest.approx(same[column].to_numpy())
    assert list(out["verdict"]) == list(same["verdict"])


def test_verdicts_say_equivalent_only_when_tost_shows_it():
    rng = np.random.default_rng(1)
    same = [rng.normal(0.0, 0.001, 10)]  # a true difference of 0, measured tightly
    assert compare_pairs(same, margin=0.005)["verdict"].item() == "equivalent"
    vague = [np.array([0.03, -0.02, 0.01])]  # a mean near 0 with a wide interval: absence of evidence
    got = compare_pairs(vague, margin=0.005).iloc[0]
    assert got["ci_low"] < 0 < got["ci_high"] and got["verdict"] == "inconclusive"
    assert compare_pairs([np.array([-0.30, -0.36, -0.33])], margin=0.005)["verdict"].item() == "worse"
    assert compare_pairs(same, margin=0.0)["verdict"].item() == "inconclusive"  # nothing is within +-0


def test_a_bad_margin_is_named():
    for bad in (-0.1, "abc", float("nan")):
        with pytest.raises(ValueError, match="equivalence margin"):
            check_margin(bad)
    assert check_margin("0.01") == 0.01


def test_differences_to_the_reference_of_a_single_factor():
    table = cell(make_table(), START)  # only lr varies
    out = differences_to(table, ["lr"], {"lr": 0.001}, True, 0.005).set_index("lr")
    assert list(out.index) == ["0.01"] and out.loc["0.01", "verdict"] == "better"


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


def test_the_reports_effects_show_every_coefficient_of_a_term_with_a_factor_of_three_levels():
    """A 3-level factor's main effect is its three level effects, and its interaction with a 2-level factor
    (real here, so Holm keeps it) all six coefficients, not one with the whole term's p beside it."""
    from dyt_lab.study.report.factor_sections import effects_section

    rng = np.random.default_rng(4)
    table = pd.DataFrame([{"center": c, "width": w, "seed": s} for c in ["none", "batch"]
                          for w in ["a", "b", "c"] for s in range(3)])
    table["value"] = (table["width"].map({"a": 0.0, "b": 0.3, "c": 0.6})
                      + np.where((table["center"] == "batch") & (table["width"] == "c"), 0.2, 0.0)
                      + rng.normal(0, 0.01, len(table)))
    lines = "\n".join(effects_section(table, ["center", "width"])).split("Type-II ANOVA")[0]  # the effects table
    rows = [line for line in lines.splitlines() if line.startswith("| ") and "term" not in line and "---" not in line]
    terms = [row.split("|")[1].strip() for row in rows]
    assert terms.count("center") == 1  # two levels: the difference
    assert terms.count("width") == 3 and terms.count("center:width") == 6
    assert "p (Holm, term)" in lines


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


def test_a_numeric_factor_with_four_levels_gets_a_response_plot(tmp_path):
    from dyt_lab.study.report.factor_sections import response_factor
    from dyt_lab.study.report.plots import response_plot

    rows = [{"name": "dyt", "alpha_init": a, "lr": lr, "seed": s, "value": 0.9 - abs(np.log10(a)) / 10 + s / 1000,
             "loss": 0.1 + abs(np.log10(a))} for a in (0.1, 0.5, 1.0, 5.0) for lr in (0.002, 0.008) for s in range(3)]
    rows += [{"name": "batchnorm", "alpha_init": "-", "lr": lr, "seed": s, "value": 0.98 + s / 1000, "loss": 0.01}
             for lr in (0.002, 0.008) for s in range(3)]
    table = pd.DataFrame(rows)
    assert response_factor(table, ["name", "alpha_init", "lr"]) == "alpha_init"
    assert response_factor(table[table["alpha_init"].isin(["-", 0.1, 0.5])], ["name", "alpha_init", "lr"]) is None
    path = response_plot(table, ["name", "alpha_init", "lr"], "alpha_init", {"name": "batchnorm"}, tmp_path,
                         "val/acc", "loss")
    assert path == tmp_path / "alpha_init_response.png" and path.stat().st_size > 10_000


def test_the_report_of_a_study_with_one_configuration_summarizes_it(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution

    from dyt_lab.study.definition.space import SearchSpace
    from dyt_lab.study.report.comparison import replicated_sections

    study = optuna.create_study(direction="maximize")
    for seed, value in enumerate((0.97, 0.98, 0.975)):
        study.add_trial(optuna.trial.create_trial(params={"model.norm": "batchnorm"}, value=value, user_attrs={"seed": seed},
                                                  distributions={"model.norm": CategoricalDistribution(["batchnorm"])}))
    space = SearchSpace({"model.norm": ["batchnorm"]})
    sections, _ = replicated_sections(study, space, {"seeds": [0, 1, 2]}, tmp_path, "val/acc", margin=0.005)
    table = next(s for s in sections if s.startswith("| configuration"))
    assert "| model.norm=batchnorm |" in table and "0.9750 ± 0.0050" in table  # named by what it is


def test_a_list_of_norms_crossed_with_presets_is_one_factor_and_its_interaction_is_tested():
    """BatchNorm sets no alpha0, so a norm list's name and alpha_init are never crossed: the report makes them
    one factor, and norm x preset (does the gap change with depth?) comes out of the saturated model."""
    from dyt_lab.study.report.factor_sections import crossed, effects_section

    rng = np.random.default_rng(5)
    arms = [("batchnorm", "-"), ("dyt", "0.5"), ("dyt", "1.0")]
    table = pd.DataFrame([{"name": n, "alpha_init": a, "preset": p, "seed": s} for n, a in arms
                          for p in ["tiny", "deep"] for s in range(3)])
    gap = {("batchnorm", "tiny"): 0.0, ("batchnorm", "deep"): 0.0, ("dyt", "tiny"): -0.03, ("dyt", "deep"): -0.09}
    table["value"] = [0.95 + gap[(n, p)] + rng.normal(0, 0.002) for n, p in zip(table["name"], table["preset"])]
    merged, factors = crossed(table, ["name", "alpha_init", "preset"])
    assert factors == ["name, alpha_init", "preset"]
    assert sorted(merged["name, alpha_init"].unique()) == ["batchnorm, -", "dyt, 0.5", "dyt, 1.0"]
    anova = "\n".join(effects_section(merged, factors)).split("Type-II ANOVA")[1]
    interaction = next(line for line in anova.splitlines() if line.startswith("| name, alpha_init:preset"))
    assert float(interaction.split("|")[3]) > 100  # F of a 6-point change of the gap against 0.2-point noise
    assert crossed(table, ["preset", "seed"])[1] == ["preset", "seed"]  # crossed already: unchanged


def depth_table(change: float, noise: float = 0.002, seed: int = 5) -> pd.DataFrame:
    """BatchNorm and two DyT arms at two depths, 4 seeds; DyT at 0.5 loses ``change`` more in the deep net."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame([{"name, alpha_init": arm, "preset": p, "seed": s} for arm in ("batchnorm, -", "dyt, 0.5", "dyt, 1.0")
                          for p in ("tiny", "deep") for s in range(4)])
    gap = {"batchnorm, -": 0.0, "dyt, 0.5": 0.04, "dyt, 1.0": 0.02}
    table["value"] = [0.95 - gap[a] - change * (a == "dyt, 0.5" and p == "deep") + SEED_SHIFT.get(s, 0.005)
                      + rng.normal(0, noise) for a, p, s in zip(table["name, alpha_init"], table["preset"], table["seed"])]
    return table


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


def test_the_report_shows_the_gap_across_depth_in_the_study_files_order():
    from dyt_lab.study.report.factor_sections import crossed, gap_change_section
    from dyt_lab.study.report.seed_runs import TEST

    table = depth_table(change=0.03).assign(**{TEST: np.nan})
    table["name"], table["alpha_init"] = zip(*table["name, alpha_init"].str.split(", "))  # as crossed() leaves it
    lines = gap_change_section(table, ["name, alpha_init", "preset"], {"name": "batchnorm"},
                               {"preset": ["tiny", "deep"]}, "val/acc")
    rows = [line for line in "\n".join(lines).splitlines() if line.startswith("| dyt")]
    assert len(rows) == 2 and not any(line.startswith("test/acc") for line in lines)  # no test split: no table
    cells = [c.strip() for c in rows[0].split("|")]
    assert cells[4] == "tiny -> deep" and cells[7].startswith("-0.03") and float(cells[8]) < 0.01
    assert gap_change_section(table, ["name, alpha_init", "preset"], {"center": "batch"}, {}, "val/acc") == []
    # BatchNorm's deep cell not yet run: crossed() merges the norm with the preset, and the reference is
    # "batchnorm, tiny"; a "gap" to it at depth would be a depth effect, so the section says why it is absent
    two_rates = pd.concat([table.assign(lr=0.002), table.assign(lr=0.008)])
    running = two_rates[(two_rates["alpha_init"] != "1.0") & ~((two_rates["name"] == "batchnorm")
                                                              & (two_rates["preset"] == "deep"))]
    merged, factors = crossed(running, ["name", "preset", "lr"])
    assert factors == ["name, preset", "lr"]
    assert gap_change_section(merged, factors, {"name": "batchnorm"}, {}, "val/acc")[1].startswith("Not shown")
    # one seed run of a second seed: a full factorial with no residual degrees of freedom left
    sparse = table[(table["seed"] == 0) | ((table["seed"] == 1) & (table["name"] == "batchnorm")
                                           & (table["preset"] == "tiny"))]
    lines = gap_change_section(sparse, ["name, alpha_init", "preset"], {"name": "batchnorm"}, {}, "val/acc")
    assert lines[-1].startswith("No gap changes for val/acc: cell means:")


def test_a_reference_is_kept_only_where_the_table_holds_it():
    """A confirmation inherits its parent's reference, which may name factors it no longer varies."""
    import pandas as pd

    from dyt_lab.study.report.seed_runs import reference_in

    table = pd.DataFrame({"squash": ["tanh", "none", "tanh", "none"], "center": ["sample", "sample", "none", "none"],
                          "shift": ["scalar"] * 4, "seed": [0, 0, 0, 0]})
    factors = ["squash", "center"]
    assert reference_in(table, factors, {"squash": "tanh", "center": "sample", "shift": "scalar"}) == \
        {"squash": "tanh", "center": "sample"}  # shift is constant, at the reference's level
    assert reference_in(table, factors, {"squash": "tanh", "center": "sample", "shift": "none"}) is None
    assert reference_in(table[table["center"] == "none"], factors, {"squash": "tanh", "center": "sample"}) is None
    assert reference_in(table, factors, None) is None


def test_an_inconclusive_verdict_says_what_it_could_detect_and_what_would_decide_it():
    from dyt_lab.study.report.markdown import verdict_text
    from dyt_lab.study.report.statistics import compare_pairs, detectable

    noisy = [np.array([0.004, -0.006, 0.009, -0.002]), np.array([0.02, 0.03, 0.025, 0.028])]
    out = compare_pairs(noisy, margin=0.005)
    row = out.iloc[0].to_dict()
    assert row["verdict"] == "inconclusive"
    # detectable at Holm's first step over the 2 comparisons, from the row's own SE and df
    assert row["mde"] == pytest.approx(float(detectable(row["std_err"], row["df"], 2)))
    assert row["mde"] > abs(row["mean_diff"])
    wider = compare_pairs(noisy, margin=0.01).iloc[0]
    assert 2 <= wider["seeds_needed"] < row["seeds_needed"]  # a wider margin needs fewer seeds
    text = verdict_text(row["verdict"], 0.005, row)
    assert text.startswith(f"inconclusive (detects ≥{row['mde']:.4f} with 80% power; ±0.005 would need "
                           f"{row['seeds_needed']:g} seeds")
    assert verdict_text("better", 0.005, out.iloc[1].to_dict()) == "better"


def test_the_effects_table_is_built_without_a_pandas_warning():
    """Masks of the whole effects table applied to a subset of it made pandas warn twice in every report."""
    import warnings

    from dyt_lab.study.report.factor_sections import effects_section

    table = depth_table(change=0.03)  # an interaction (the planted change) that survives Holm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lines = effects_section(table, ["name, alpha_init", "preset"])
    assert any("name, alpha_init:preset" in line for line in lines)


def test_every_difference_the_report_shows_is_arm_minus_reference_and_its_header_says_so():
    """DyT at alpha0 0.5 is about 4 points below BatchNorm in the tiny net and 7 in the deep one: the same negative
    numbers in the configurations table and the gap table, and a negative contrast in the effects."""
    from dyt_lab.study.report.comparison import configurations_section
    from dyt_lab.study.report.factor_sections import effects_section, gap_change_section
    from dyt_lab.study.report.seed_runs import EXTRA, TEST

    table = depth_table(change=0.03).assign(**{TEST: np.nan, **{c: np.nan for c in EXTRA.values()}})
    table["name"], table["alpha_init"] = zip(*table["name, alpha_init"].str.split(", "))
    factors, reference = ["name, alpha_init", "preset"], {"name": "batchnorm"}
    configs = configurations_section(table, factors, {"name, alpha_init": "batchnorm, -"}, "maximize", 0.005, "val/acc")
    cells = [[c.strip() for c in line.split("|")] for line in configs.splitlines()]
    delta = {(r[1], r[2]): r[cells[0].index("Δ row − reference [95% CI]")].split()[0] for r in cells[2:]}
    assert delta[("dyt, 0.5", "tiny")].startswith("-0.03") and delta[("dyt, 0.5", "deep")].startswith("-0.07")
    lines = gap_change_section(table, factors, reference, {"preset": ["tiny", "deep"]}, "val/acc")
    assert lines[1].startswith("Δ = arm − reference in val/acc")
    gap = [c.strip() for c in next(line for line in lines[-1].splitlines() if line.startswith("| dyt, 0.5")).split("|")]
    assert gap[5].split()[0] == delta[("dyt, 0.5", "tiny")] and gap[6].split()[0] == delta[("dyt, 0.5", "deep")]
    assert gap[7].startswith("-0.03")  # the planted change: 3 points more lost in the deep net
    two = table[table["alpha_init"] != "1.0"].assign(norm=lambda t: t["name"])
    effects = "\n".join(effects_section(two, ["norm", "preset"], {"norm": "batchnorm"}))
    assert "| dyt - batchnorm" in effects and "batchnorm - dyt" not in effects


def test_the_configurations_table_shows_a_differences_interval_uncut():
    """Two seeds, one of them a collapse: the t-interval on one degree of freedom runs past -1 and +1, and the table
    says so rather than printing [-1.0000, +1.0000], which reads like a measurement at the metric's bounds."""
    from dyt_lab.study.report.comparison import configurations_section
    from dyt_lab.study.report.seed_runs import EXTRA, TEST

    table = pd.DataFrame({"norm": ["bn", "bn", "dyt", "dyt"], "seed": [0, 1, 0, 1], "value": [0.9, 0.95, 0.1, 0.9],
                          TEST: np.nan, **{c: np.nan for c in EXTRA.values()}})
    text = configurations_section(table, ["norm"], {"norm": "bn"}, "maximize", 0.005, "val/acc")
    row = next(line for line in text.splitlines() if line.startswith("| dyt"))
    low, high = (float(x) for x in row.split("-0.4250 [")[1].split("]")[0].split(", "))
    assert low < -1 and high > 1  # mean -0.425, sd of the differences 0.53, t(1) = 12.7


def test_the_response_plots_loss_intervals_stay_at_or_above_zero(tmp_path, monkeypatch):
    """A loss near 0 with one wild seed: its t-interval runs below 0, which a loss cannot; the plot clips it at 0
    and its title says so."""
    from dyt_lab.study.report import plots

    drawn = {}

    def keep(axes, path):  # the axes as drawn, before saving
        drawn["axes"] = axes
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    rows = [{"name": "dyt", "alpha_init": a, "seed": s, "value": 0.9 + s / 1000, "loss": [0.01, 0.02, 0.3][s] * a}
            for a in (0.1, 0.5, 1.0, 5.0) for s in range(3)]
    rows += [{"name": "batchnorm", "alpha_init": "-", "seed": s, "value": 0.95, "loss": [0.01, 0.02, 0.3][s]} for s in range(3)]
    plots.response_plot(pd.DataFrame(rows), ["name", "alpha_init"], "alpha_init", {"name": "batchnorm"}, tmp_path,
                        "val/acc", "loss")
    loss = drawn["axes"][0, 1]
    lows = [segment[:, 1].min() for bars in loss.collections for segment in bars.get_segments()]
    assert lows and min(lows) >= 0.0
    assert all(patch.get_y() >= 0.0 for patch in loss.patches)  # the reference's band too
    assert "clipped at 0" in loss.get_title(loc="left")
    assert "clipped to [0, 1]" in drawn["axes"][0, 0].get_title(loc="left")


def test_a_single_configuration_is_named_by_its_levels_and_gets_no_factor_effects(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    from dyt_lab.study.definition.space import SearchSpace
    from dyt_lab.study.definition.study_file import Distribution
    from dyt_lab.study.report.comparison import replicated_sections

    study = optuna.create_study(direction="maximize")
    for seed, value in enumerate((0.97, 0.98, 0.975)):
        study.add_trial(optuna.trial.create_trial(params={"model.optimizer.lr": 0.0034567891}, value=value,
                                                  user_attrs={"seed": seed},
                                                  distributions={"model.optimizer.lr": FloatDistribution(0.001, 0.01)}))
    space = SearchSpace({"model.optimizer.lr": Distribution(type="float", low=0.001, high=0.01)})
    sections, _ = replicated_sections(study, space, {"seeds": [0, 1, 2]}, tmp_path, "val/acc", margin=0.005)
    assert "| model.optimizer.lr=0.003457 |" in "\n".join(sections)  # what it is, to 4 digits
    assert "## Factor effects" not in sections  # one configuration has no factor to estimate
