"""``study/report/statistics.py`` and the differences of ``seed_runs.py`` on synthetic seed tables drawn from a
known linear model (tests/study/synthetic.py): summaries and their intervals, t-tests, differences to a
reference, pairing by seed, verdicts and what an inconclusive one could detect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from dyt_lab.study.definition.margin import check_margin
from dyt_lab.study.report.seed_runs import differences_to
from dyt_lab.study.report.statistics import compare_pairs, paired_by_seed, summarize, t_tests
from tests.study.synthetic import FACTORS, START, cell, make_table


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
