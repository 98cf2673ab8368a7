"""``dyt-lab study compare NAME AGAINST``: two studies' configurations paired seed by seed.

Some comparisons cannot live in one study: a batch-free search has keys (the squash, the branch gain)
that BatchNorm does not take, so BatchNorm at its best learning rate is a study of its own. When both
studies ran the same seeds on the same data split (two confirmations, ``--seeds 10..14``), a run of
one and the run of the other with the same seed are a pair: this pairs every configuration of NAME
with the best configuration of AGAINST (by its mean) and reports the difference, its t-interval, the
test of 0 and the equivalence test (TOST, +-margin), Holm-adjusted over NAME's configurations, with
``statistics.compare_pairs`` as the report does within one study. It compares the held-out test split
where every run of both has it, else the studies' objective.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.design import varying_factors
from dyt_lab.study.definition.space import saved_space
from dyt_lab.study.definition.storage import find_storage, load_existing
from dyt_lab.study.definition.study_file import DEFAULT_MARGIN, check_margin
from dyt_lab.study.report import statistics
from dyt_lab.study.report.comparison import NOT_FACTORS, TEST, _p, metric_bounds, seed_run_table
from dyt_lab.study.report.markdown import markdown_table


def seed_runs(name: str, root: str, storage: str | None) -> tuple[pd.DataFrame, list[str], str]:
    """A study's completed seed runs, the factors that tell its configurations apart, and its direction."""
    study = load_existing(name, find_storage(name, root, storage))
    table = seed_run_table(study, saved_space(Path(root) / name))
    if table.empty:
        raise ConfigError(f"study '{name}' has no completed seed run to compare")
    factors = varying_factors(table.drop(columns=NOT_FACTORS, errors="ignore"))
    if not factors:  # one configuration: it is its own label
        table, factors = table.assign(configuration="the only one"), ["configuration"]
    return table, factors, study.direction.name.lower()


def labelled(table: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    """The table with a ``label`` column: each configuration's levels as text (``lr=0.002, squash=tanh``)."""
    return table.assign(label=[statistics.text_of({f: row[f] for f in factors}) for _, row in table.iterrows()])


def compare(name: str, against: str, root: str = "studies", storage: str | None = None,
            margin: float | None = None) -> Path:
    """Print and write ``NAME/versus_AGAINST.md``: each configuration of NAME minus AGAINST's best, paired by seed."""
    try:
        margin = check_margin(DEFAULT_MARGIN if margin is None else margin)
    except ValueError as err:
        raise ConfigError(f"--margin: {err}") from None
    ours, our_factors, direction = seed_runs(name, root, storage)
    theirs, their_factors, their_direction = seed_runs(against, root, storage)
    if direction != their_direction:
        raise ConfigError(f"study '{name}' and study '{against}' optimise in opposite directions "
                          f"({direction}, {their_direction}): their objectives are not one metric")
    value = TEST if ours[TEST].notna().all() and theirs[TEST].notna().all() else "value"
    ours, theirs = labelled(ours, our_factors), labelled(theirs, their_factors)
    maximize = direction == "maximize"
    means = theirs.groupby("label")[value].mean()
    best = means.idxmax() if maximize else means.idxmin()
    reference = theirs[theirs["label"] == best].set_index("seed")[value]
    shared_any = set(ours["seed"]) & set(reference.index)
    if not shared_any:
        raise ConfigError(f"study '{name}' (seeds {sorted(set(ours['seed']))}) and study '{against}' (seeds "
                          f"{sorted(reference.index)}) share no seed: nothing to pair")
    labels = list(dict.fromkeys(ours["label"]))
    diffs = [(ours[ours["label"] == label].set_index("seed")[value] - reference).dropna().to_numpy() for label in labels]
    result = statistics.compare_pairs(diffs, higher_is_better=maximize, margin=margin, bounds=metric_bounds(value))
    result.insert(0, "configuration", labels)
    result["mean"] = [ours[ours["label"] == label][value].mean() for label in labels]
    result = result.sort_values("mean_diff", ascending=not maximize, ignore_index=True)
    rows = [[r["configuration"], str(r["n_pairs"]), f"{r['mean']:.4f}", f"{reference.mean():.4f}",
             f"{r['mean_diff']:+.4f}", "too few seeds" if pd.isna(r["ci_low"]) else f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]",
             _p(r["p_diff_holm"]), _p(r["p_tost_holm"]), f"equivalent (±{margin:g})" if r["verdict"] == "equivalent" else r["verdict"]]
            for r in result.to_dict("records")]
    text = "\n\n".join([
        f"# Study {name} against study {against}",
        f"Each configuration of `{name}` minus the best configuration of `{against}` ({best}, mean {value} "
        f"{reference.mean():.4f} over seeds {sorted(int(s) for s in reference.index)}), paired by seed on {value}. "
        "The interval is a t-interval of the paired differences (spread pooled over the table unless Bartlett's "
        "test says the spreads differ); p of a difference and of the equivalence test (TOST) are Holm-adjusted "
        "over the table.",
        markdown_table(["configuration", "pairs", f"{name} {value}", f"{against} {value}", "Δ", "95% CI",
                        "p (Holm)", "TOST p (Holm)", "verdict"], rows)]) + "\n"
    out = Path(root) / name / f"versus_{against}.md"
    out.write_text(text)
    print(text)
    print(f"written: {out}")
    return out
