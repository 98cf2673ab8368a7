"""The report of a study tuned arm by arm (``arms``): each arm's budget, its best, its edges, and the arms at
their bests side by side.

A comparison of arms is fair only if each was tuned alike (Melis et al. 2018; Dodge et al. 2019): this
report says how many configurations and seed runs each arm got, and whether each arm's best lies at an
edge of a searched range, where a wider range might have found better (then it says which). The arms at
their bests are compared on the search's own seeds, paired by seed (and by test image where the runs saved
their predictions): those numbers chose the bests, so they are exploratory, biased upward by selection;
a holdout on fresh seeds (``dyt-lab study holdout``) is what confirms them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from optuna.distributions import CategoricalDistribution

from dyt_lab.errors import ConfigError
from dyt_lab.study.attributes import SEED
from dyt_lab.study.definition.space import SearchSpace, saved_space
from dyt_lab.study.definition.storage import find_storage, load_existing
from dyt_lab.study.report.markdown import markdown_table, publish
from dyt_lab.study.report.per_image import crossed_family, detectable_points, points, points_interval
from dyt_lab.study.report.seed_runs import TEST, seed_run_table

EDGE = 0.1  # a best within the outer tenth of a range (on its own scale) is "at the edge"


def edges(best: dict, space: SearchSpace) -> list[str]:
    """One phrase per searched key whose best value lies at an edge of its range, with a wider range to try."""
    found = []
    for key, dist in space.distributions.items():
        value = best.get(key)
        if value is None or isinstance(value, str):
            continue
        if isinstance(dist, CategoricalDistribution):
            numbers = sorted(v for v in space.choices(key) if isinstance(v, (int, float)) and not isinstance(v, bool))
            if len(numbers) > 2 and value in (numbers[0], numbers[-1]):
                found.append(f"{key}={value:g} is the {'lowest' if value == numbers[0] else 'highest'} of its choices")
            continue
        if dist.high == dist.low:
            continue
        log = getattr(dist, "log", False)
        scale = (lambda v: math.log(v)) if log else (lambda v: v)  # noqa: E731
        where = (scale(value) - scale(dist.low)) / (scale(dist.high) - scale(dist.low))
        if where < EDGE or where > 1 - EDGE:
            low_side = where < EDGE
            wider = (dist.low / 4 if log else dist.low - (dist.high - dist.low) / 4) if low_side else \
                (dist.high * 4 if log else dist.high + (dist.high - dist.low) / 4)
            if low_side and not log and dist.low >= 0 > wider:  # a rate, a fraction: nothing below 0
                wider = 0.0 if dist.low > 0 else None
            side = "low" if low_side else "high"
            found.append(f"{key}={value:.3g} at the {side} edge of [{dist.low:g}, {dist.high:g}]: "
                         + (f"try {side}={wider:.3g}" if wider is not None else "the range's natural end"))
    return found


def arm_table(name: str, root: str) -> tuple[pd.DataFrame, SearchSpace, list[str], str]:
    """An arm study's completed seed runs, its search space, its factors, and its failed (or interrupted) runs:
    how many, and how many of those a later run of the same configuration and seed completed."""
    folder = Path(root) / name
    study = load_existing(name, find_storage(name, root, None))
    space = saved_space(folder)
    table = seed_run_table(study, space)
    trials = study.get_trials(deepcopy=False)
    done = {(str(t.params), t.user_attrs.get(SEED)) for t in trials if t.state.name == "COMPLETE"}
    failed = [t for t in trials if t.state.name == "FAIL"]
    unresolved = sum((str(t.params), t.user_attrs.get(SEED)) not in done for t in failed)
    shown = f"{len(failed)} ({len(failed) - unresolved} rerun to completion)" if failed else "0"
    return table, space, [k for k in space.distributions if k in table.columns], shown


def arms_report(name: str, arms: list[str], root: str = "studies", margin: float = 0.005) -> Path:
    """Print and write ``NAME/report.md`` for a study tuned arm by arm; its path."""
    budget_rows, best_rows, edge_lines, bests = [], [], [], {}
    for arm in arms:
        if not (Path(root) / f"{name}.{arm}").is_dir():
            budget_rows.append([arm, "not run yet", "-", "-", "-"])
            continue
        table, space, keys, failed = arm_table(f"{name}.{arm}", root)
        if table.empty:
            budget_rows.append([arm, "0", "-", "-", str(failed)])
            continue
        by_config = table.groupby(keys, dropna=False)
        means = by_config["value"].agg(["mean", "count"]).sort_values("mean", ascending=False)
        best_levels = dict(zip(keys, means.index[0] if isinstance(means.index[0], tuple) else (means.index[0],)))
        best_runs = table[np.logical_and.reduce([table[k] == v for k, v in best_levels.items()])]
        bests[arm] = best_runs.set_index("seed")
        budget_rows.append([arm, str(len(means)), str(len(table)), ", ".join(map(str, sorted(table["seed"].unique()))),
                            failed])
        best_rows.append([arm, f"{means['mean'].iloc[0]:.4f}", str(int(means["count"].iloc[0])),
                          f"{best_runs[TEST].mean():.4f}" if best_runs[TEST].notna().all() else "-",
                          ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                                    for k, v in best_levels.items())])
        at_edge = edges(best_levels, space)
        edge_lines.append(f"- {arm}: " + ("; ".join(at_edge) if at_edge else "inside every range"))
    equal = len({(row[1], row[2]) for row in budget_rows}) == 1
    sections = [
        f"# Study {name}: arms tuned alike",
        "Each arm is a study of its own, `" + f"{name}.ARM" + "`, with the same search over the shared keys, the same "
        "sampler, number of configurations and seeds, plus its own keys. Budgets are " +
        ("**equal**" if equal else "**not equal** (a comparison below favours the arm that got more)") + ".",
        "## Budget", markdown_table(["arm", "configurations", "seed runs", "seeds", "failed or interrupted runs"], budget_rows),
        "## Each arm at its best (by mean objective over its seeds)",
        markdown_table(["arm", "objective (mean)", "seeds", "test/acc (mean)", "best configuration"], best_rows),
        "## Edges of the searched ranges", "\n".join(edge_lines),
    ]
    sections += versus_first(arms, bests, margin, equal)
    text = "\n\n".join(sections) + "\n"
    out = Path(root) / name / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    publish(text, out)
    return out


def versus_first(arms: list[str], bests: dict[str, pd.DataFrame], margin: float, equal: bool) -> list[str]:
    """Each arm's best minus the first arm's best on test/acc, paired by seed and test image: exploratory."""
    reference = arms[0]
    others = [a for a in arms[1:] if a in bests]
    if reference not in bests or not others:
        return []
    runs = {a: bests[a]["run_dir"].dropna().to_dict() for a in [reference, *others]}
    try:
        table, seeds = crossed_family({f"{a} - {reference}": (runs[a], runs[reference]) for a in others}, margin)
    except ConfigError as err:  # runs from before predictions were saved, or too few shared seeds
        return ["## Arms at their bests", f"No image-level comparison: {err}"]
    rows = [[r["label"], points(r["mean_diff"]), points_interval(r["seed_ci_low"], r["seed_ci_high"]),
             points_interval(r["ci_low"], r["ci_high"]), detectable_points(r["mde"]), r["verdict"]]
            for r in table.to_dict("records")]
    return ["## Arms at their bests, on the search's seeds (exploratory)",
            f"test/acc difference in points, paired by seed ({seeds}) and test image; Holm over the table, margin "
            f"±{100 * margin:g}. The bests were chosen on these seeds, so these numbers are biased upward; budgets "
            f"{'equal' if equal else 'NOT equal'}. Only a holdout on fresh seeds confirms them.",
            markdown_table(["arms", "Δ", "seed-only 95% CI", "seeds × images 95% CI", "detectable (80%)", "verdict"],
                           rows)]
