"""``dyt-lab study report``: what ran, what won, what mattered; on the terminal and in the study folder.

The terminal and ``report.md`` show the same Markdown tables, so a report pastes into an issue or
a README as printed. Files written into the study folder: report.md, trials.csv and the PNGs of
plots.py.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from dyt_lab.errors import ConfigError
from dyt_lab.study.attributes import (
    CONFIG,
    CONFIRMS,
    DESIGN,
    EPOCHS,
    FAIL_REASON,
    OBJECTIVE,
    RUN_DIR,
    SEED,
    WALL_TIME,
)
from dyt_lab.study.definition.margin import report_margin
from dyt_lab.study.definition.space import saved_space
from dyt_lab.study.definition.storage import find_storage, load_existing, retried_trial_number, retry_history
from dyt_lab.study.definition.study_file import TRIALS, confirmation_name
from dyt_lab.study.report.comparison import replicated_sections
from dyt_lab.study.report.confirmation import confirmed_section
from dyt_lab.study.report.markdown import markdown_table
from dyt_lab.study.report.plots import mean_by, placement_and_variant, varied_keys, write_plots
from dyt_lab.study.report.seed_runs import seed_run_table


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _note(trial: FrozenTrial, retried_as: dict[int, int]) -> str:
    notes = []
    if retried_trial_number(trial) is not None:
        notes.append(f"retry of #{retried_trial_number(trial)}")
    if trial.number in retried_as:
        notes.append(f"retried as #{retried_as[trial.number]}")
    if trial.state == TrialState.FAIL:
        notes.append(str(trial.user_attrs.get(FAIL_REASON, "failed")))
    return "; ".join(notes)


def trials_table(study: optuna.Study, metric: str) -> str:
    """One row per trial: number, state, objective, epochs, time, every parameter, and a note."""
    trials = study.get_trials(deepcopy=False)
    params = sorted({p for t in trials for p in t.params})
    retried_as = {n: t.number for t in trials for n in retry_history(t)[-1:]}
    rows = []
    for t in trials:
        seconds = t.user_attrs.get(WALL_TIME)
        rows.append([str(t.number), t.state.name.lower(), _number(t.value), _number(t.user_attrs.get(SEED)),
                     _number(t.user_attrs.get(EPOCHS)),
                     f"{seconds:.0f} s" if seconds is not None else "-",
                     *(_number(t.params.get(p)) for p in params), _note(t, retried_as)])
    return markdown_table(["#", "state", metric, "seed", "epochs", "time", *params, "note"], rows)


def placement_variant_table(study: optuna.Study) -> tuple[str, str] | None:
    """What the table is by, and the mean objective per placement (rows) x variant (columns) with trial counts;
    None if neither is searched."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    placement, variant = placement_and_variant(sorted({p for t in complete for p in t.params}))
    if not complete or not (placement or variant):
        return None
    row, column = (placement, variant) if placement else (variant, None)
    cells = mean_by(complete, row, column)
    cols = sorted({c for _, c in cells})
    rows = [[r, *(f"{cells[(r, c)][0]:.4g} (n={cells[(r, c)][1]})" if (r, c) in cells else "-" for c in cols)]
            for r in sorted({r for r, _ in cells})]
    by = "placement x variant" if column else f"`{row}`"
    return by, markdown_table([f"{row} \\ {column}" if column else row, *(cols if column else ["mean"])], rows)


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """Optuna's parameter importances (its default evaluator) over the keys that varied, or why there are none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, "needs at least 2 completed trials"  # Optuna would return equal shares, which mislead
    varied = varied_keys(complete)
    if len(varied) < 2:  # one key takes all of the share by construction: nothing is compared
        held = sorted({p for t in complete for p in t.params} - set(varied))
        which = f"only `{varied[0]}` varied" if varied else "no searched key varied"
        return {}, which + (f" ({', '.join(f'`{k}`' for k in held)} held one value)" if held else "") + \
            "; importances compare two or more keys that varied"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, params=varied)), None
    except Exception as err:  # e.g. fewer than two completed trials
        return {}, str(err).splitlines()[0] if str(err) else type(err).__name__


def how_to_open(name: str, url: str, folder: Path) -> list[str]:
    """Commands that open the same study in optuna-dashboard and its runs in TensorBoard."""
    return [f"optuna-dashboard {url}   (pip install optuna-dashboard; then http://127.0.0.1:8080)",
            f"tensorboard --logdir {folder / TRIALS}   (one run per trial; HParams tab compares them)"]


def linked_confirm(name: str, root: str, storage: str | None) -> optuna.Study | None:
    """The confirm study ``NAME.confirm`` (``dyt-lab study confirm``), if one was started."""
    confirm_name = confirmation_name(name)
    try:
        return load_existing(confirm_name, find_storage(confirm_name, root, storage))
    except ConfigError:
        return None


def report(name: str, root: str = "studies", storage: str | None = None, margin: float | None = None) -> Path:
    """Print the report of study ``name`` and write it into its folder; return report.md's path."""
    url = find_storage(name, root, storage)
    study = load_existing(name, url)
    folder = Path(root) / name
    space = saved_space(folder)  # what decodes the labels Optuna stored
    objective = study.user_attrs.get(OBJECTIVE, {"metric": "value", "value": ""})
    metric = f"{objective['metric']} ({objective['value']})" if objective.get("value") else objective["metric"]
    direction = study.direction.name.lower()
    sections = [f"# Study {name}", f"Storage: `{url}`. Objective: {direction} {metric}.",
                "## Trials", trials_table(study, metric)]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    design = study.user_attrs.get(DESIGN) or {}
    replicated_files: list[Path] = []
    margin = report_margin(design, margin)
    confirms = study.user_attrs.get(CONFIRMS)  # this study is itself a confirmation: what it confirms
    confirm_study = None if confirms else linked_confirm(name, root, storage)
    if design.get("seeds"):  # one configuration = several seed runs: compare means, not single runs
        replicated, replicated_files = replicated_sections(study, space, design, folder, metric, margin, confirm_study,
                                                                 confirms)
        sections += replicated
    elif complete:
        best = study.best_trial
        config = best.user_attrs.get(CONFIG)
        params = "\n".join(f"- `{k}` = `{v}`" for k, v in best.params.items())
        sections += ["## Best trial", f"Trial #{best.number}: {metric} = {_number(best.value)}, "
                     f"run folder `{best.user_attrs.get(RUN_DIR)}`, config `{config}`.", params]
        if config and Path(config).is_file():
            sections.append(f"```yaml\n{Path(config).read_text().strip()}\n```")
        if confirm_study is not None:  # single runs chose the winners; the confirm study measures them
            sections += confirmed_section(confirm_study, space, seed_run_table(study, space), margin, metric)
    elif not design.get("seeds"):
        sections += ["## Best trial", "No completed trial yet."]
    grid = placement_variant_table(study)
    if grid:
        sections += [f"## Objective by {grid[0]}", f"Mean {metric} of completed trials.", grid[1]]
    found, why_not = importances(study)
    sections.append("## Parameter importances")
    if found:
        sections.append(f"Optuna's default evaluator over the {len(complete)} completed trials "
                        "(pruned and failed trials are not in it), over the keys that took more than one value; "
                        "with few trials, a hint only.")
        sections.append(markdown_table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in found.items()]))
    else:
        sections.append(f"None: {why_not.rstrip('.')}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
    files = [*replicated_files, *write_plots(study, folder, metric, seeded=bool(design.get("seeds")))]
    files = [p for p in files if p.is_file()]  # the list names what is there, nothing that was skipped
    sections += ["## Files", "\n".join(f"- `{p.name}`" for p in [folder / "trials.csv", *files]),
                 "## Open the study", "\n".join(f"    {line}" for line in how_to_open(name, url, folder))]
    text = "\n\n".join(sections) + "\n"
    (folder / "report.md").write_text(text)
    print(_terminal(text))
    print(f"written: {folder / 'report.md'}, trials.csv and {len(files)} plots in {folder}")
    return folder / "report.md"


def _terminal(text: str) -> str:
    """The report for the terminal: as report.md, without the best trial's full config (its path is there)."""
    start = text.find("```yaml")
    return text if start < 0 else text[:start] + text[text.find("```", start + 7) + 4:]

