"""dyt_lab.study.report.resampling on simulated studies: per-image correctness drawn from a known model.

The model (logits, per arm): base + difficulty[i] +- arm_image[i] / 2 + seed_effect[arm, s], and each
(seed, image) cell is a Bernoulli draw. Difficulty is shared by both arms; arm_image makes the
difference vary by image; seed_effect varies by run. The true difference is the population mean over
images and seeds, taken from one very large draw.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import expit
from statsmodels.stats.contingency_tables import mcnemar

from dyt_lab.study.report.resampling import (
    bootstrap_means,
    compare_crossed,
    crossed_variance,
    mcnemar_by_seed,
)
from dyt_lab.study.report.statistics import ALPHA

# (base_a, base_b, sd of difficulty, sd of arm x image, sd of the seed effect)
MIXED = (2.5, 2.3, 1.5, 1.5, 0.15)  # seed, image and seed x image parts all matter
IMAGES = (2.5, 2.3, 1.0, 2.0, 0.0)  # the test set's sampling dominates: no seed effect at all
SEEDS = (2.5, 2.3, 1.5, 0.3, 0.4)  # runs differ most; few images disagree by image


def simulate(rng, model, K: int, S: int, N: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, S, N) correctness of arms A and B: K independent studies, each with fresh seeds and images."""
    base_a, base_b, sd_difficulty, sd_arm_image, sd_seed = model
    difficulty = rng.normal(0, sd_difficulty, (K, 1, N))
    arm_image = rng.normal(0, sd_arm_image, (K, 1, N))
    seed_a, seed_b = rng.normal(0, sd_seed, (2, K, S, 1))
    p_a = expit(base_a + difficulty + arm_image / 2 + seed_a)
    p_b = expit(base_b + difficulty - arm_image / 2 + seed_b)
    return rng.random((K, S, N)) < p_a, rng.random((K, S, N)) < p_b


def true_difference(model, n: int = 2_000_000) -> float:
    """The population's expected accuracy difference, from one large draw (its SE is about 1e-4)."""
    a, b = simulate(np.random.default_rng(99), model, n, 1, 1)  # each image with its own seed: both are drawn
    return float(a.mean() - b.mean())


def differences(rng, model, K, S, N) -> np.ndarray:
    a, b = simulate(rng, model, K, S, N)
    return a.astype(np.int8) - b.astype(np.int8)


def covers(frame, low: str, high: str, truth: float) -> float:
    return float(((frame[low] <= truth) & (truth <= frame[high])).mean())


def t_interval_covers(frame, se: str, truth: float) -> float:
    half = stats.t.ppf(1 - ALPHA / 2, frame["df"]) * frame[se]
    return float(((frame["mean_diff"] - half <= truth) & (truth <= frame["mean_diff"] + half)).mean())


def test_crossed_interval_covers_and_seed_only_does_not():
    """200 simulated studies: the seeds x images interval covers the truth near 95%; seed-only falls short
    where the test images carry most of the variance (the referee's point)."""
    rng = np.random.default_rng(1)
    truth = true_difference(MIXED)
    frame = pd.concat([compare_crossed(differences(rng, MIXED, 50, S, N), 0.01, n_boot=300, seed=S + N)
                       for S, N in [(5, 500), (7, 1000), (10, 2000), (10, 500)]])
    assert frame[["share_seed", "share_image", "share_interaction"]].mean().min() > 0.2  # all three matter
    assert 0.90 <= covers(frame, "ci_low", "ci_high", truth) <= 0.99
    # The bootstrap's SE counts the seed x image part three times: its intervals are wider and cover more.
    assert (frame["boot_se"] > frame["moment_se"]).mean() > 0.9
    assert t_interval_covers(frame, "boot_se", truth) >= covers(frame, "ci_low", "ci_high", truth)

    truth = true_difference(IMAGES)
    frame = compare_crossed(differences(rng, IMAGES, 200, 10, 500), 0.01, n_boot=300)
    assert frame["share_image"].mean() > 0.5
    assert 0.90 <= covers(frame, "ci_low", "ci_high", truth) <= 0.99
    assert covers(frame, "seed_ci_low", "seed_ci_high", truth) < 0.85


def owen_expectation(d: np.ndarray) -> float:
    """The pigeonhole bootstrap's variance given the data, from the two-way decomposition (Owen 2007)."""
    S, N = d.shape
    x = d.astype(float)
    rows, cols = x.mean(1) - x.mean(), x.mean(0) - x.mean()
    resid = x - x.mean() - rows[:, None] - cols[None, :]
    return (rows**2).sum() / S**2 + (cols**2).sum() / N**2 + (resid**2).sum() / (S * N) ** 2


def test_bootstrap_variance_against_moments():
    rng = np.random.default_rng(2)
    d = differences(rng, SEEDS, 1, 10, 2000)
    parts = crossed_variance(d[0])
    assert parts["share_interaction"] < 0.2
    assert bootstrap_means(d, 2000, seed=3)[0].var() == pytest.approx(parts["var_total"], rel=0.2)
    # Where the seed x image part is large the bootstrap is conservative, exactly as Owen's formula says.
    d = differences(rng, IMAGES, 1, 10, 2000)
    boot = bootstrap_means(d, 2000, seed=4)[0].var()
    assert boot == pytest.approx(owen_expectation(d[0]), rel=0.1)
    assert boot > 1.2 * crossed_variance(d[0])["var_total"]


def test_bootstrap_is_paired_deterministic_and_centred():
    rng = np.random.default_rng(5)
    d = differences(rng, MIXED, 2, 4, 300)
    family = np.stack([d[0], -d[0], d[1]])
    means = bootstrap_means(family, 400, seed=7)
    assert means.shape == (3, 400)
    np.testing.assert_array_equal(means[1], -means[0])  # the same draws for every comparison
    np.testing.assert_array_equal(means, bootstrap_means(family, 400, seed=7))
    assert means[2].mean() == pytest.approx(d[1].mean(), abs=3 * means[2].std() / math.sqrt(400))
    moments = compare_crossed(family, 0.01, n_boot=400, seed=7)
    boot = compare_crossed(family, 0.01, n_boot=400, seed=7, se="bootstrap")
    np.testing.assert_allclose(moments["std_err"], np.sqrt(crossed_variance(family)["var_total"]))
    np.testing.assert_allclose(boot["std_err"], means.std(axis=1, ddof=1))


def test_moment_decomposition_matches_the_anova_table():
    rng = np.random.default_rng(6)
    d = differences(rng, MIXED, 3, 6, 400)
    parts = crossed_variance(d)  # vectorised over the 3 comparisons
    for k in range(3):
        x = d[k].astype(float)
        S, N = x.shape
        rows, cols = x.mean(1), x.mean(0)
        ms_seed, ms_image = N * rows.var(ddof=1), S * cols.var(ddof=1)
        ms_resid = ((x - rows[:, None] - cols[None, :] + x.mean()) ** 2).sum() / ((S - 1) * (N - 1))
        assert parts["sigma2_resid"][k] == pytest.approx(ms_resid)
        assert parts["sigma2_seed"][k] == pytest.approx(max(0, (ms_seed - ms_resid) / N))
        assert parts["sigma2_image"][k] == pytest.approx(max(0, (ms_image - ms_resid) / S))
        if ms_seed > ms_resid and ms_image > ms_resid:  # unclipped: the textbook Satterthwaite
            total = (ms_seed + ms_image - ms_resid) / (S * N)
            assert parts["var_total"][k] == pytest.approx(total)
            df = (ms_seed + ms_image - ms_resid) ** 2 / (
                ms_seed**2 / (S - 1) + ms_image**2 / (N - 1) + ms_resid**2 / ((S - 1) * (N - 1)))
            assert parts["df"][k] == pytest.approx(df)
    shares = parts["share_seed"] + parts["share_image"] + parts["share_interaction"]
    np.testing.assert_allclose(shares, 1.0)


def test_no_image_variation_and_a_single_seed():
    per_seed = np.array([1, 0, 1, -1, 1, 0], dtype=np.int8)
    parts = crossed_variance(np.repeat(per_seed[:, None], 50, axis=1))  # every image the same difference
    assert parts["share_image"] == 0 and parts["share_interaction"] == 0 and parts["share_seed"] == 1
    noise = differences(np.random.default_rng(8), (2.0, 2.0, 0.0, 0.0, 0.0), 1, 8, 3000)[0]
    assert crossed_variance(noise)["share_image"] < 0.05  # cells independent: no image part to find

    one = differences(np.random.default_rng(9), MIXED, 2, 1, 500)
    assert np.isnan(crossed_variance(one)["df"]).all()
    frame = compare_crossed(one, 0.01, n_boot=100)
    assert (frame["verdict"] == "too few seeds").all() and (frame["seed_verdict"] == "too few seeds").all()
    assert frame[["seed_ci_low", "ci_low", "df", "share_seed", "mde"]].isna().all().all()
    assert all(math.isnan(n) for n in frame["seeds_needed"])
    assert frame["mean_diff"].notna().all() and frame["boot_low"].notna().all()


def test_mcnemar_by_seed_counts_and_p():
    # Seed 0: 7 images only A gets right, 2 only B, 5 both, 3 neither; seed 1: 0 and 4.
    rows = {0: [(1, 0)] * 7 + [(0, 1)] * 2 + [(1, 1)] * 5 + [(0, 0)] * 3,
            1: [(1, 0)] * 0 + [(0, 1)] * 4 + [(1, 1)] * 10 + [(0, 0)] * 3}
    a = np.array([[p[0] for p in rows[s]] for s in (0, 1)], dtype=bool)
    b = np.array([[p[1] for p in rows[s]] for s in (0, 1)], dtype=bool)
    out = mcnemar_by_seed(a, b)
    assert out["b"].tolist() == [7, 0] and out["c"].tolist() == [2, 4]
    assert out["p"][0] == pytest.approx(mcnemar([[5, 7], [2, 3]], exact=True).pvalue)
    assert out["p"][0] == pytest.approx(stats.binomtest(2, 9, 0.5).pvalue)  # exact McNemar is a sign test
    assert out["p"][1] == pytest.approx(stats.binomtest(0, 4, 0.5).pvalue)


def test_seeds_and_images_needed():
    rng = np.random.default_rng(10)
    d = differences(rng, IMAGES, 1, 6, 300)
    parts = {k: float(v[0]) for k, v in crossed_variance(d).items()}
    # 300 images, whose part alone is above the target SE at +-0.5 points: more seeds cannot decide it.
    tight = compare_crossed(d, 0.005, n_boot=200).iloc[0]
    assert tight["seeds_needed"] == math.inf and math.isfinite(tight["images_needed"])
    needed = [compare_crossed(d, m, n_boot=200).iloc[0]["seeds_needed"] for m in (0.045, 0.05, 0.06)]
    assert all(isinstance(n, int) for n in needed) and needed[0] > needed[1] > needed[2] > 2
    # The planned design reaches the target SE and one seed fewer does not (unless at the floor of 2).
    target = (0.045 / (stats.norm.ppf(1 - ALPHA) + stats.norm.ppf(0.9))) ** 2

    def variance(S, N):
        return parts["sigma2_seed"] / S + parts["sigma2_image"] / N + parts["sigma2_resid"] / (S * N)

    assert variance(needed[0], 300) <= target < variance(needed[0] - 1, 300)
    images = int(tight["images_needed"])
    target = (0.005 / (stats.norm.ppf(1 - ALPHA) + stats.norm.ppf(0.9))) ** 2
    assert variance(6, images) <= target < variance(6, images - 1)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3)), r"shape \(2, 3\); give an array \(comparisons, seeds, images\)"),
    ([np.zeros((2, 5)), np.zeros((3, 5))], r"shapes differ: \[\(2, 5\), \(3, 5\)\]"),
    (np.full((1, 2, 5), 2), r"difference 2 is not one of -1, 0, 1"),
    (np.full((1, 2, 5), 0.5), r"difference 0.5 is not one of -1, 0, 1"),
    (np.zeros((1, 2, 1)), r"1 test image\(s\); give at least 2"),
])
def test_bad_differences(bad, message):
    with pytest.raises(ValueError, match=message):
        compare_crossed(bad, 0.005)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"shape \(4,\); give an array \(seeds, images\) or"):
        crossed_variance(np.zeros(4))
    with pytest.raises(ValueError, match=r"power 1.5 must lie strictly between 0 and 1"):
        compare_crossed(np.zeros((1, 2, 5)), 0.005, power=1.5)
    with pytest.raises(ValueError, match=r"se 'normal' is not 'moments' or 'bootstrap'"):
        compare_crossed(np.zeros((1, 2, 5)), 0.005, se="normal")
    with pytest.raises(ValueError, match=r"equivalence margin -1"):
        compare_crossed(np.zeros((1, 2, 5)), -1)
    with pytest.raises(ValueError, match=r"shapes \(2, 3\) and \(2, 4\)"):
        mcnemar_by_seed(np.ones((2, 3), bool), np.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"correctness value 3 is not a boolean"):
        mcnemar_by_seed(np.full((2, 3), 3), np.ones((2, 3), bool))
