"""The report of a pre-registered holdout: each claim's verdict, over seeds and test images, confirmatory.

For each claim (arm minus against, paired by seed and by test image) it shows the seed-only interval, as
every other table of the bench did, beside the interval that includes the test set's sampling
(``resampling.compare_crossed``: crossed seeds x images), Holm over the claims file's claims, which
variance part dominates, McNemar's exact test per seed, and for a claim not confirmed the smallest effect
the holdout could have detected and the seeds or images that would decide it. Only these verdicts may be
called confirmatory: their claims, analysis and seeds were recorded before the data (``claims.py``).
"""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from dyt_lab.errors import ConfigError
from dyt_lab.predictions import predictions_of
from dyt_lab.study.attributes import HOLDOUT, RUN_DIR, SEED
from dyt_lab.study.definition.storage import find_storage, load_existing
from dyt_lab.study.report.markdown import markdown_table, publish
from dyt_lab.study.report.per_image import correctness, crossed_family, planning_text, points, points_interval
from dyt_lab.study.report.resampling import mcnemar_by_seed
from dyt_lab.study.report.statistics import ALPHA


def confirmed(test: str, row) -> bool:
    """Whether the claim's own test passed at ALPHA after Holm: TOST for equivalent, the difference test else."""
    if test == "equivalent":
        return bool(row["p_tost_holm"] < ALPHA)
    significant = bool(row["p_diff_holm"] < ALPHA)
    return significant and (row["mean_diff"] > 0 if test == "better" else row["mean_diff"] < 0)


def runs_by_arm(study, arms: dict[str, dict]) -> dict[str, dict[int, str]]:
    """Arm -> seed -> run folder of each completed run, the arm found by its params."""
    found: dict[str, dict[int, str]] = {arm: {} for arm in arms}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        arm = next((name for name, params in arms.items()
                    if all(str(trial.params.get(k)) == str(v) for k, v in params.items())), None)
        if arm is not None:
            found[arm][int(trial.user_attrs[SEED])] = trial.user_attrs[RUN_DIR]
    return found


def holdout_report(name: str, root: str = "studies", storage: str | None = None) -> Path:
    """Print and write ``NAME/report.md`` for holdout NAME; its path."""
    study = load_existing(name, find_storage(name, root, storage))
    record = study.user_attrs.get(HOLDOUT)
    if not record:
        raise ConfigError(f"study '{name}' is not a holdout (no claims file recorded): report it with "
                          f"dyt-lab study report {name}")
    folder = Path(root) / name
    runs = {arm: {seed: predictions_of(run_dir, folder) for seed, run_dir in by_seed.items()}
            for arm, by_seed in runs_by_arm(study, record["arms"]).items()}
    claims = record["claims"]
    used = sorted({c[role] for c in claims for role in ("arm", "against")})
    if min(len(runs[arm]) for arm in used) < 2:
        raise ConfigError(f"holdout '{name}' has fewer than 2 completed runs of an arm of {used}: run it to its end "
                          f"first (dyt-lab study holdout {record['file']})")
    table, seeds = crossed_family({c["name"]: (runs[c["arm"]], runs[c["against"]]) for c in claims}, record["margin"])
    correct = {arm: correctness([runs[arm][s] for s in seeds]) for arm in used}  # arm -> (S, N), for McNemar
    n_images = int(table["n_images"].iloc[0])

    arm_rows = [[arm, str(len(runs[arm])), f"{correct[arm].mean():.4f}" if arm in correct else "-",
                 f"{correct[arm].mean(axis=1).std(ddof=1):.4f}" if arm in correct else "-",
                 ", ".join(f"{k}={v}" for k, v in record["arms"][arm].items())] for arm in record["arms"]]
    claim_rows, power_lines, mcnemar_lines = [], [], []
    for claim, row in zip(claims, table.to_dict("records")):
        ok = confirmed(claim["test"], row)
        claim_rows.append([
            claim["name"], f"{claim['arm']} - {claim['against']}", claim["test"], points(row["mean_diff"]),
            points_interval(row["seed_ci_low"], row["seed_ci_high"]), points_interval(row["ci_low"], row["ci_high"]),
            f"{row['p_diff_holm']:.3g}", f"{row['p_tost_holm']:.3g}",
            f"{row['share_seed']:.0%} / {row['share_image']:.0%} / {row['share_interaction']:.0%}",
            ("confirmed" if ok else "not confirmed") + " (confirmatory)"])
        if not ok:
            power_lines.append(f"- `{claim['name']}`: not confirmed; this holdout "
                               + planning_text(row, record["margin"], len(seeds), n_images) + ".")
        per_seed = mcnemar_by_seed(correct[claim["arm"]], correct[claim["against"]])
        mcnemar_lines.append(f"- `{claim['name']}`: " + "; ".join(
            f"seed {seeds[r['seed']]}: {r['b']} vs {r['c']} (p {r['p']:.2g})" for r in per_seed.to_dict("records")))
    text = "\n\n".join([
        f"# Holdout {name}: pre-registered claims",
        f"Claims file `{record['file']}` (SHA-256 `{record['sha256'][:16]}…`), recorded in the storage when the "
        f"study was created, before its first run. Seeds {seeds} (fresh: no study of {record['family']} ran "
        f"them), {n_images} test images, metric {record['metric']} of each run's best checkpoint. Selection of "
        f"the arms, as stated before the run: {record['selection']}",
        "## Arms", markdown_table(["arm", "runs", "mean test/acc", "sd over seeds", "settings"], arm_rows),
        "## Claims",
        "Δ is arm minus against, in points, paired by seed and by test image. *Seed-only* is the t-interval of "
        "the per-seed differences (test images fixed, as the bench's other tables); *seeds × images* adds the "
        "test set's own sampling (crossed random effects, method of moments, Satterthwaite df: "
        "`dyt_lab/study/report/resampling.py`). p and TOST p (±"
        f"{100 * record['margin']:g} points) are on seeds × images, Holm-adjusted over the {len(claims)} claims. "
        "Variance: the shares of the seed, image and seed × image parts of Δ's variance.",
        markdown_table(["claim", "comparison", "test", "Δ", "seed-only 95% CI", "seeds × images 95% CI",
                        "p (Holm)", "TOST p (Holm)", "variance seed / image / seed×image", "verdict"], claim_rows),
        *(["## What would decide the claims not confirmed", "\n".join(power_lines)] if power_lines else []),
        "## McNemar's exact test per seed (images only one arm got right: arm vs against)", "\n".join(mcnemar_lines),
    ]) + "\n"
    out = Path(root) / name / "report.md"
    publish(text, out)
    return out
