"""Paired comparisons whose intervals include the test set's own sampling, not only seed-to-seed variance.

Every run is scored on one fixed test split, so ``statistics.compare_pairs`` (per-seed accuracies) leaves
test-image sampling out of its intervals: on 500 images no number of seeds can show a +-0.5-point
equivalence. Here a comparison of arm A against arm B is the array of per-image differences

    d[k, s, i] = correct_A[s, i] - correct_B[s, i]  in {-1, 0, 1}     (K comparisons, S seeds, N images)

with runs paired by seed and the same images for every run. Seeds and images are crossed random
factors, the design Bouthillier et al. (MLSys 2021, "Accounting for variance in machine learning
benchmarks") argue a benchmark must randomise together. Two estimates of the mean's variance:

- ``crossed_variance``: method-of-moments components of a two-way crossed random-effects model with one
  observation per cell (seed, image, seed x image), and a Satterthwaite degrees of freedom;
- ``bootstrap_means``: the two-level ("pigeonhole") bootstrap of Owen (2007, "The pigeonhole bootstrap",
  Annals of Applied Statistics), resampling seeds and images independently. It is conservative, as Owen
  discusses: given the data its variance is (N SS_seed + S SS_image + SS_resid) / (S N)^2, whose
  expectation is about (1 - 1/S) sigma2_seed/S + sigma2_image/N + 3 sigma2_resid/(S N): the seed x image
  part counted three times (tests/study/test_report_resampling.py checks both).

``compare_crossed`` turns them into verdicts (``statistics.verdicts``: Holm, TOST) with the moment SE by
default (the bootstrap's is a column and an option), shows the seed-only verdict beside them, and says how
many seeds or images would make a comparison decidable.
``mcnemar_by_seed`` is the exact McNemar test per seed, which Dietterich (1998) recommends for two
classifiers scored on one test set.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from statsmodels.stats.contingency_tables import mcnemar

from dyt_lab.study.definition.margin import check_margin
from dyt_lab.study.report.statistics import ALPHA, detectable, equivalence_se, t_tests, verdicts

CHUNK = 250  # bootstrap replicates per matrix product: W is (CHUNK, N) float32, 10 MB at N = 10,000


def check_differences(d, ndims: tuple[int, ...] = (3,)) -> np.ndarray:
    """``d`` as int8 (ndim in ``ndims``), values in {-1, 0, 1}, at least 2 images; else a ValueError."""
    if isinstance(d, (list, tuple)):
        shapes = {np.shape(x) for x in d}
        if len(shapes) > 1:
            raise ValueError(f"the comparisons' (seeds, images) shapes differ: {sorted(shapes)}; "
                             "give equal shapes")
        if not d:
            raise ValueError("no comparisons given; give a (comparisons, seeds, images) array "
                             "or a list of (seeds, images) ones")
        d = np.stack([np.asarray(x) for x in d])
    d = np.asarray(d)
    if d.ndim not in ndims:
        want = " or ".join({2: "(seeds, images)", 3: "(comparisons, seeds, images)"}[n] for n in ndims)
        raise ValueError(f"differences have shape {d.shape}; give an array {want}")
    if d.size == 0 or d.shape[-2] < 1:
        raise ValueError(f"differences have shape {d.shape}: no seeds; give at least one seed")
    if d.shape[-1] < 2:
        raise ValueError(f"differences have {d.shape[-1]} test image(s); give at least 2")
    bad = ~np.isin(d, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"difference {d[bad][0].item()!r} is not one of -1, 0, 1 "
                         "(correct_A - correct_B per image)")
    return d.astype(np.int8)


def crossed_variance(d) -> dict[str, np.ndarray]:
    """Method-of-moments split of the grand mean's variance into seed, image and seed x image parts.

    ``d`` is (S, N) for one comparison or (K, S, N) for K of them (then every value is a (K,) array).
    Returns ``sigma2_*`` (the components), ``var_seed``, ``var_image``, ``var_interaction`` (their parts
    of the mean's variance), ``var_total``, ``share_*`` (part / total) and ``df`` (Satterthwaite, from the
    mean squares). With one seed the seed part cannot be told apart: everything is NaN ("too few seeds").
    """
    d = check_differences(d, ndims=(2, 3))
    S, N = d.shape[-2:]
    rows = d.sum(axis=-1, dtype=np.int64) / N  # (..., S) seed means
    cols = d.sum(axis=-2, dtype=np.int64) / S  # (..., N) image means
    grand = rows.mean(axis=-1)  # (...)
    # d is in {-1, 0, 1}, so sum(d^2) counts the non-zero cells: no float copy of the (S, N) array.
    ss_total = np.count_nonzero(d, axis=(-2, -1)) - S * N * grand**2
    ss_seed = N * ((rows - grand[..., None]) ** 2).sum(axis=-1)
    ss_image = S * ((cols - grand[..., None]) ** 2).sum(axis=-1)
    ss_resid = np.maximum(ss_total - ss_seed - ss_image, 0.0)  # the double-centred residuals' sum of squares
    df_seed, df_image, df_resid = S - 1, N - 1, (S - 1) * (N - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        nan = np.full_like(grand, np.nan)  # one seed: no seed or residual mean square
        ms_seed, ms_resid = (ss_seed / df_seed, ss_resid / df_resid) if df_seed else (nan, nan)
        ms_image = ss_image / df_image
        # The total used is the sum of the components clipped at 0, so each part is a variance and the shares
        # lie in [0, 1]. Unclipped it is (MS_seed + MS_image - MS_resid) / (S N), which can even be negative;
        # clipping only ever raises it (conservative), and only when a factor shows no variance at all.
        sigma2_seed = np.maximum(0.0, (ms_seed - ms_resid) / N)
        sigma2_image = np.maximum(0.0, (ms_image - ms_resid) / S)
        sigma2_resid = ms_resid
        parts = {"var_seed": sigma2_seed / S, "var_image": sigma2_image / N,
                 "var_interaction": sigma2_resid / (S * N)}
        total = sum(parts.values())
        # The total as a combination of mean squares, sum_j c_j MS_j: a clipped component drops its MS and
        # MS_resid's coefficient makes up the rest. Satterthwaite: df = (sum c MS)^2 / sum (c MS)^2 / df_j.
        keep_seed, keep_image = (ms_seed > ms_resid).astype(float), (ms_image > ms_resid).astype(float)
        terms = [(keep_seed * ms_seed, df_seed), (keep_image * ms_image, df_image),
                 ((1 - keep_seed - keep_image) * ms_resid, df_resid)]  # (c_j MS_j, df_j)
        denominator = sum(np.where(c_ms == 0, 0.0, c_ms**2 / max(df_j, 1)) for c_ms, df_j in terms)
        df = np.where(denominator > 0, (S * N * total) ** 2 / denominator, np.nan)
        out = {"sigma2_seed": sigma2_seed, "sigma2_image": sigma2_image, "sigma2_resid": sigma2_resid,
               **parts, "var_total": total, "df": df}
        for name, part in parts.items():
            out["share_" + name[4:]] = np.where(total > 0, part / total, np.nan)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def bootstrap_means(d, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """(K, n_boot) means of the two-level bootstrap: S seeds and N images drawn with replacement each time.

    Every comparison sees the same draws, so a family stays paired. A draw is a vector of counts
    (how often each seed / image was picked), so a replicate's mean is sum_s V[s] sum_i d[s, i] W[i] / (S N).
    """
    d = check_differences(d)
    K, S, N = d.shape
    rng = np.random.default_rng(seed)
    V = _counts(rng, n_boot, S).astype(np.float64)  # (n_boot, S) seed counts
    flat = d.reshape(K * S, N).astype(np.float32)  # (K S, N)
    out = np.empty((K, n_boot))
    for start in range(0, n_boot, CHUNK):
        W = _counts(rng, min(CHUNK, n_boot - start), N).astype(np.float32)  # (b, N) image counts
        # Every partial sum is an integer of size <= N (the counts add up to N): exact in float32, N < 2^24.
        inner = (flat @ W.T).reshape(K, S, -1)  # (K, S, b): each seed's image-weighted sum
        out[:, start:start + W.shape[0]] = np.einsum("ksb,bs->kb", inner, V[start:start + W.shape[0]])
    return out / (S * N)


def _counts(rng: np.random.Generator, n_draws: int, n: int) -> np.ndarray:
    """(n_draws, n) multinomial(n, 1/n) counts: n indices drawn with replacement, counted per row.

    bincount over offset indices, because ``rng.multinomial`` with 10,000 categories is much slower.
    """
    picks = rng.integers(0, n, size=(n_draws, n)) + (np.arange(n_draws) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=n_draws * n).reshape(n_draws, n)


def compare_crossed(d, margin: float, higher_is_better: bool = True, n_boot: int = 2000, seed: int = 0,
                    power: float = 0.8, se: str = "moments", alpha: float = ALPHA) -> pd.DataFrame:
    """A family of A-B comparisons from per-image differences: seed-only and seeds x images tests, power.

    ``d`` is (K, S, N) or a list of K (S, N) arrays. ``verdict`` is on the seeds x images t-test (SE from
    ``se``, Satterthwaite df, Holm over the K rows); ``seed_verdict`` is today's seed-only one, for contrast.
    ``se="moments"`` takes ``moment_se``, ``"bootstrap"`` the replicates' SD ``boot_se``; both are columns.
    ``mde``, ``seeds_needed`` and ``images_needed`` are planning numbers (see ``_planning``).
    """
    margin = check_margin(margin)
    if not 0 < power < 1:
        raise ValueError(f"power {power!r} must lie strictly between 0 and 1, e.g. 0.8")
    if se not in ("moments", "bootstrap"):
        raise ValueError(f"se {se!r} is not 'moments' or 'bootstrap'")
    d = check_differences(d)
    K, S, N = d.shape
    per_seed = d.sum(axis=-1, dtype=np.int64) / N  # (K, S) each seed's accuracy difference
    out = pd.DataFrame({"n_seeds": S, "n_images": N, "mean_diff": per_seed.mean(axis=1)})

    # Seed-only, as statistics.compare_pairs does it with each comparison's own spread.
    seed_se = per_seed.std(axis=1, ddof=1) / math.sqrt(S) if S > 1 else np.full(K, np.nan)
    by_seed = t_tests(out["mean_diff"], seed_se, np.full(K, S - 1.0), margin)
    for key in ("ci_low", "ci_high", "p_diff", "p_tost"):
        out["seed_" + key] = by_seed[key]
    seed_frame = pd.DataFrame({"mean_diff": out["mean_diff"], "p_diff": by_seed["p_diff"],
                               "p_tost": by_seed["p_tost"]})
    out["seed_verdict"] = verdicts(seed_frame, margin, higher_is_better, alpha)["verdict"].to_numpy()

    # Seeds x images. The moment SE is the default: the bootstrap counts the seed x image part three times
    # (Owen 2007), so where that part is large its intervals cover well above 95% (tests/study/test_report_resampling.py).
    parts = crossed_variance(d)
    boot = bootstrap_means(d, n_boot, seed)  # (K, n_boot)
    out["moment_se"], out["boot_se"] = np.sqrt(parts["var_total"]), boot.std(axis=1, ddof=1)
    out["std_err"] = out["moment_se" if se == "moments" else "boot_se"]
    out["df"] = parts["df"]
    tests = t_tests(out["mean_diff"], out["std_err"], out["df"], margin)
    for key in ("ci_low", "ci_high", "p_diff", "p_tost"):
        out[key] = tests[key]
    out["boot_low"], out["boot_high"] = np.quantile(boot, [ALPHA / 2, 1 - ALPHA / 2], axis=1)
    for name in ("share_seed", "share_image", "share_interaction"):
        out[name] = parts[name]
    out = verdicts(out, margin, higher_is_better, alpha)  # alpha: the level of a verdict (a look's, sequentially)
    out["mde"] = detectable(out["std_err"], out["df"], K, power)
    return pd.concat([out, _planning(parts, S, N, K, margin, power)], axis=1)


def _planning(parts: dict, S: int, N: int, K: int, margin: float, power: float) -> pd.DataFrame:
    """seeds_needed and images_needed per comparison; a family of K is tested at ALPHA / K.

    ALPHA / K is Holm's first (strictest) step, Bonferroni's level: a comparison that clears it clears Holm.
    ``mde`` is ``statistics.detectable``: (t_{1 - a/2, df} + t_{power, df}) SE.
    - TOST at +-margin, true difference 0, passes with ``power`` when
      SE <= SE_target = margin / (z_{1-a} + z_{(1+power)/2}), the usual normal approximation (e.g. Chow,
      Shao & Wang's equivalence sample size: both one-sided tests must pass, so each takes half of beta).
      Normal quantiles, since a planned design's df is not known. The needed seeds S (images fixed) or
      images N (seeds fixed) solve sigma2_seed / S + sigma2_image / N + sigma2_resid / (S N) = SE_target^2;
      inf when the fixed factor's part alone is already too large (more of the other cannot decide it).
    """
    target = equivalence_se(margin, K, power) ** 2
    seeds, images = [], []
    for s2_seed, s2_image, s2_resid in zip(parts["sigma2_seed"].ravel(), parts["sigma2_image"].ravel(),
                                           parts["sigma2_resid"].ravel()):
        seeds.append(_solve(s2_seed + s2_resid / N, target - s2_image / N, least=2))
        images.append(_solve(s2_image + s2_resid / S, target - s2_seed / S, least=2))
    return pd.DataFrame({"seeds_needed": pd.Series(seeds, dtype=object),
                         "images_needed": pd.Series(images, dtype=object)})


def _solve(numerator: float, room: float, least: int) -> int | float:
    """Smallest n with numerator / n <= room: an int, inf if room <= 0, NaN if unknown (one seed)."""
    if math.isnan(numerator) or math.isnan(room):
        return math.nan
    if room <= 0:
        return math.inf
    return max(least, math.ceil(numerator / room))


def mcnemar_by_seed(correct_a, correct_b) -> pd.DataFrame:
    """Per seed, the exact McNemar test of A against B on the same images: b (A right, B wrong), c, p.

    ``correct_a`` and ``correct_b`` are (S, N) booleans, paired by seed and image.
    """
    a, b = (np.asarray(x) for x in (correct_a, correct_b))
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"correctness arrays have shapes {a.shape} and {b.shape}; "
                         "give two equal (seeds, images) arrays")
    for x in (a, b):
        if not np.isin(x, (0, 1)).all():
            value = x[~np.isin(x, (0, 1))][0].item()
            raise ValueError(f"correctness value {value!r} is not a boolean (True/False or 1/0)")
    a, b = a.astype(bool), b.astype(bool)
    only_a, only_b = (a & ~b).sum(axis=1), (~a & b).sum(axis=1)  # (S,) the discordant pairs
    both, neither = (a & b).sum(axis=1), (~a & ~b).sum(axis=1)
    p = [mcnemar([[n11, n10], [n01, n00]], exact=True).pvalue
         for n11, n10, n01, n00 in zip(both, only_a, only_b, neither)]
    return pd.DataFrame({"seed": np.arange(len(a)), "b": only_a, "c": only_b, "p": p})
