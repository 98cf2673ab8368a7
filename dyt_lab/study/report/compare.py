"""``dyt-lab study compare NAME AGAINST``: two studies' configurations paired seed by seed.

Some comparisons cannot live in one study: a batch-free search has keys (the squash, the branch gain)
that BatchNorm does not take, so BatchNorm at its best learning rate is a study of its own. When both
studies ran the same seeds on the same data split (two confirmations, ``--seeds 10..14``), a run of
one and the run of the other with the same seed are a pair: this pairs every configuration of NAME
with the best configuration of AGAINST (by its mean) and reports the difference, its t-interval, the
test of 0 and the equivalence test (TOST, +-margin), Holm-adjusted over NAME's configurations, by
``statistics.paired_by_seed``, the pairing the report uses within one study. It compares the held-out test
split where every run of both has it, else the studies' objective.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dyt_lab.errors import ConfigError
from dyt_lab.study.attributes import DESIGN, OBJECTIVE
from dyt_lab.study.definition.design import varying_factors
from dyt_lab.study.definition.margin import report_margin
from dyt_lab.study.definition.space import saved_space
from dyt_lab.study.definition.storage import find_storage, load_existing
from dyt_lab.study.report.markdown import markdown_table, p_value, publish, verdict_text
from dyt_lab.study.report.per_image import crossed_family, planning_text, points, points_interval
from dyt_lab.study.report.seed_runs import NOT_FACTORS, TEST, one_configuration, seed_run_table
from dyt_lab.study.report.statistics import paired_by_seed, text_of


def seed_runs(name: str, root: str, storage: str | None) -> tuple[pd.DataFrame, dict, str]:
    """A seeded study's completed seed runs, each labelled by the levels that tell its configuration apart, its
    design (with its objective's metric) and its direction; a study without seeds is refused (its runs have no seed to pair by)."""
    study = load_existing(name, find_storage(name, root, storage))
    design = {**(study.user_attrs.get(DESIGN) or {}), "metric": (study.user_attrs.get(OBJECTIVE) or {}).get("metric")}
    if not design.get("seeds"):
        raise ConfigError(f"study '{name}' has no seeds (its study file sets none): nothing to pair by seed")
    table = seed_run_table(study, saved_space(Path(root) / name))
    if table.empty:
        raise ConfigError(f"study '{name}' has no completed seed run to compare")
    factors = varying_factors(table.drop(columns=NOT_FACTORS, errors="ignore"))
    # one configuration is labelled by what it is (its name, the levels it sets)
    table = table.assign(label=[text_of({f: row[f] for f in factors}) for _, row in table.iterrows()]
                         if factors else one_configuration(table))
    return table, design, study.direction.name.lower()


def compare(name: str, against: str, root: str = "studies", storage: str | None = None,
            margin: float | None = None) -> Path:
    """Print and write ``NAME/versus_AGAINST.md``: each configuration of NAME minus AGAINST's best, paired by seed."""
    ours, design, direction = seed_runs(name, root, storage)
    theirs, _, their_direction = seed_runs(against, root, storage)
    margin = report_margin(design, margin)
    if direction != their_direction:
        raise ConfigError(f"study '{name}' and study '{against}' optimise in opposite directions "
                          f"({direction}, {their_direction}): their objectives are not one metric")
    # the test split's accuracy where every run has it (higher is better), else the studies' objective
    value = TEST if ours[TEST].notna().all() and theirs[TEST].notna().all() else "value"
    maximize = value == TEST or direction == "maximize"
    means = theirs.groupby("label")[value].mean()
    best = means.idxmax() if maximize else means.idxmin()
    reference = theirs[theirs["label"] == best].set_index("seed")[value]
    # a configuration with no seed in common is left out: it has nothing to pair
    pairs = {label: (runs.set_index("seed")[value], reference) for label, runs in ours.groupby("label", sort=False)
             if runs["seed"].isin(reference.index).any()}
    if not pairs:
        raise ConfigError(f"study '{name}' (seeds {sorted(set(ours['seed']))}) and study '{against}' (seeds "
                          f"{sorted(reference.index)}) share no seed: nothing to pair")
    # both means are over the paired seeds, so they subtract to Δ
    result = paired_by_seed(pairs, margin, higher_is_better=maximize)
    result = result.sort_values("mean_diff", ascending=not maximize, ignore_index=True)
    rows = [[r["label"], str(r["n_pairs"]), f"{r['arm_mean']:.4f}", f"{r['against_mean']:.4f}",
             f"{r['mean_diff']:+.4f}", "too few seeds" if pd.isna(r["ci_low"]) else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
             p_value(r["p_diff_holm"]), p_value(r["p_tost_holm"]), verdict_text(r["verdict"], margin, r)]
            for r in result.to_dict("records")]
    left_out = sorted(set(ours["label"]) - set(pairs))
    crossed = image_level_section(ours, theirs[theirs["label"] == best], list(result["label"]), margin) \
        if value == TEST else []
    text = "\n\n".join([
        f"# Study {name} against study {against}",
        f"Each configuration of `{name}` minus the best configuration of `{against}` ({best}, mean {value} "
        f"{reference.mean():.4f} over seeds {sorted(int(s) for s in reference.index)}), paired by seed on {value}; "
        "both means are over the paired seeds. The interval is a t-interval of the paired differences (spread pooled "
        "over the table unless Bartlett's test says the spreads differ); p of a difference and of the equivalence "
        f"test (TOST, ±{margin:g}) are Holm-adjusted over the table."
        + (f" Left out, no seed in common: {'; '.join(left_out)}." if left_out else ""),
        markdown_table(["configuration", "pairs", f"{name} {value}", f"{against} {value}", "Δ", "95% CI",
                        "p (Holm)", "TOST p (Holm)", "verdict"], rows), *crossed]) + "\n"
    out = Path(root) / name / f"versus_{against}.md"
    publish(text, out)
    return out


def image_level_section(ours: pd.DataFrame, reference: pd.DataFrame, labels: list[str], margin: float) -> list[str]:
    """The same differences with the test set's sampling in their intervals (seeds x images), and their power."""
    runs_of = lambda frame: frame.dropna(subset=["run_dir"]).set_index("seed")["run_dir"].to_dict()  # noqa: E731
    pairs = {label: (runs_of(ours[ours["label"] == label]), runs_of(reference)) for label in labels}
    try:
        table, seeds = crossed_family(pairs, margin)
    except ConfigError as err:  # runs from before predictions were saved, or too few shared seeds
        return ["## Over seeds and test images", f"Not computed: {err}"]
    rows = [[r["label"], points(r["mean_diff"]), points_interval(r["seed_ci_low"], r["seed_ci_high"]),
             points_interval(r["ci_low"], r["ci_high"]), f"{r['share_image']:.0%}", p_value(r["p_diff_holm"]),
             p_value(r["p_tost_holm"]), verdict_text(r["verdict"], margin),
             "-" if r["verdict"] in ("better", "worse", "equivalent") else
             planning_text(r, margin, len(seeds), int(r["n_images"]))]
            for r in table.to_dict("records")]
    return ["## Over seeds and test images",
            f"The same differences in points, paired by seed ({seeds}) and by test image ({int(table['n_images'].iloc[0])} "
            "images), with the test set's own sampling in the interval (crossed random effects, method of moments, "
            "Satterthwaite df: dyt_lab/study/report/resampling.py); seed-only is the interval above. Holm over the "
            "table. For an inconclusive row: the difference it detects with 80% power, and the seeds (or images) "
            "that would show equivalence within the margin ('inf': no number of them would).",
            markdown_table(["configuration", "Δ (points)", "seed-only 95% CI", "seeds × images 95% CI", "image share",
                            "p (Holm)", "TOST p (Holm)", "verdict", "detectable (80%); needed"], rows)]
