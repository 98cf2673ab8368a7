"""``dyt-lab study holdout CLAIMS.yaml``: run a pre-registered holdout, then report its verdicts.

The holdout is an ordinary seeded study named by the claims file (so it resumes after Ctrl-C or
``kill -9``: run the same command), whose configurations are the arms, queued with their exact settings,
each run on every fresh seed and tested on the test split. Before any run it refuses:

- seeds that a study of the family (NAME or NAME.*, its arms and confirmations) ran;
- claims run before: the same file's hash under another holdout, a finished holdout run again, or a
  holdout whose claims file changed since its first run (its data were collected for other claims).

The file's SHA-256 and text are recorded in the storage when the study is created, before the first run.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import yaml

from dyt_lab.errors import ConfigError
from dyt_lab.predictions import archive_predictions
from dyt_lab.study.attributes import HOLDOUT, RUN_DIR
from dyt_lab.study.definition.claims import CLAIMS_FILE, ClaimsFile, load_claims
from dyt_lab.study.definition.space import choice_label
from dyt_lab.study.definition.storage import load_existing, storage_url
from dyt_lab.study.definition.study_file import SPEC_FILE, Base, Pruner, Sampler, StudySpec, load_spec

SAME_CLAIMS = ("base", "arms", "claims", "metric", "margin")  # what makes two claims files the same claims


def family_seeds(claims: ClaimsFile, family_root: str | None = None) -> dict[str, list[int]]:
    """Study name -> the seeds it ran, for every study of the family (NAME and NAME.*) under ``family_root``
    (default: the claims file's root; a fresh clone has the shipped family's study files in docs/results)."""
    root, found = Path(family_root or claims.root), {}
    for member in claims.family:
        folders = [f for f in sorted(root.glob(f"{member}*")) if f.name == member or f.name.startswith(f"{member}.")]
        folders = [f for f in folders if (f / SPEC_FILE).is_file()]
        if not folders:
            studies = sorted(f.name for f in root.glob("*") if (f / SPEC_FILE).is_file())
            raise ConfigError(f"family study '{member}' has no folder with {SPEC_FILE} under {root}/; studies there: "
                              f"{', '.join(studies[:8]) or 'none'}")
        for folder in folders:
            spec = load_spec(["--config", str(folder / SPEC_FILE)], prog="dyt-lab study holdout")
            found[folder.name] = sorted(spec.seeds or [])
    return found


def check_fresh(claims: ClaimsFile, family_root: str | None = None) -> None:
    """Refuse seeds the family ran and claims that ran before, in one line; nothing is written."""
    for study, seeds in family_seeds(claims, family_root).items():
        if reused := sorted(set(seeds) & set(claims.seeds)):
            raise ConfigError(f"seeds {reused} were run by study '{study}' (seeds {seeds}): a holdout's seeds must be "
                              f"fresh; give seeds that no study of {claims.family} used")
    mine = yaml.safe_load(claims.text)
    for other in Path(claims.root).glob(f"*/{CLAIMS_FILE}"):
        ran = yaml.safe_load(other.read_text())
        if other.parent.name == claims.name and ran != mine:
            raise ConfigError(f"holdout '{claims.name}' ran with another claims file ({other}): claims are fixed "
                              "before the data; state new claims under a new name, on fresh seeds")
        same = all(ran.get(key) == mine.get(key) for key in SAME_CLAIMS)
        if other.parent.name != claims.name and same and (reused := sorted(set(ran["seeds"]) & set(claims.seeds))):
            raise ConfigError(f"these claims ran already as holdout '{other.parent.name}' on seeds {reused}: its "
                              "verdicts stand; a second look at the same claims needs seeds it did not use")


def holdout_spec(claims: ClaimsFile) -> tuple[StudySpec, dict[str, dict]]:
    """The holdout's study and each arm's Optuna params: keys where the arms differ become categoricals,
    keys where they agree fixed overrides. Every arm must set every key that distinguishes them."""
    for arm_name, arm in claims.arms.items():
        if arm.configs:
            raise ConfigError(f"arms.{arm_name}.configs: a holdout's arms differ only in overrides; put config "
                              "files in base.configs and set what differs under each arm's overrides")
    keys = sorted({key for arm in claims.arms.values() for key in arm.overrides})
    varying, fixed = {}, dict(claims.base.overrides)
    for key in keys:
        values = {name: arm.overrides.get(key, KeyError) for name, arm in claims.arms.items()}
        if missing := [name for name, value in values.items() if value is KeyError]:
            raise ConfigError(f"arm(s) {missing} do not set '{key}', which another arm sets: give every arm its "
                              "exact value of every key the arms set")
        distinct = {json.dumps(v, sort_keys=True) for v in values.values()}
        if len(distinct) == 1:
            fixed[key] = next(iter(values.values()))
        else:
            varying[key] = values
    if not varying:
        raise ConfigError("the arms set every key alike: they are one configuration, nothing to compare")
    choices = {key: list({json.dumps(v, sort_keys=True): v for v in values.values()}.values())
               for key, values in varying.items()}
    params = {name: {key: choice_label(values[name]) for key, values in varying.items()} for name in claims.arms}
    spec = StudySpec(base=Base(configs=list(claims.base.configs), overrides=fixed), search_space=choices,
                     sampler=Sampler(name="random", seed=0), pruner=Pruner(name="none"), n_trials=len(claims.arms),
                     study_name=claims.name, storage=claims.storage, root=claims.root, workers=claims.workers,
                     seeds=list(claims.seeds), margin=claims.margin)
    return spec, params


def holdout(path: str, workers: int | None = None, family_root: str | None = None) -> Path:
    """Check the claims file, run (or resume) the holdout, and write its report; the report's path.

    ``family_root``: where the family's study folders are, if not under the claims file's root.
    """
    from dyt_lab.study.engine.runner import run_study
    from dyt_lab.study.report.holdout import holdout_report

    claims = load_claims(path)
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"--workers {workers} must be 1 or more")
        claims.workers = workers
    check_fresh(claims, family_root)
    spec, params = holdout_spec(claims)
    record = {"file": str(path), "sha256": claims.sha256, "text": claims.text, "arms": params,
              "claims": [vars(c) for c in claims.claims], "metric": claims.metric, "margin": claims.margin,
              "selection": claims.selection, "family": claims.family}
    check_recorded(spec, claims)
    try:
        run_study(spec, queue=list(params.values()), attrs={HOLDOUT: record}, only_queued=True)
        # The runs' predictions beside the journal, small enough to commit: the report reads them from there
        # where the run folders (checkpoints, events) are not kept.
        study = load_existing(spec.study_name, storage_url(spec.storage, spec.folder))
        archive_predictions([t.user_attrs[RUN_DIR] for t in study.get_trials(deepcopy=False)
                             if t.state == optuna.trial.TrialState.COMPLETE], spec.folder)
    finally:  # once the study exists (its checks passed), the claims file as it ran lies beside it
        if (spec.folder / SPEC_FILE).is_file() and not (spec.folder / CLAIMS_FILE).is_file():
            (spec.folder / CLAIMS_FILE).write_text(claims.text)
    return holdout_report(claims.name, root=claims.root, storage=None if claims.storage in ("sqlite", "journal")
                          else claims.storage)


def check_recorded(spec: StudySpec, claims: ClaimsFile) -> None:
    """A holdout that exists in its storage must have recorded these claims, and may not have finished."""
    try:  # never opens a storage file that is not there (opening would create it)
        study = load_existing(spec.study_name, storage_url(spec.storage, spec.folder))
    except ConfigError:  # no such study yet
        return
    recorded = study.user_attrs.get(HOLDOUT) or {}
    if recorded and recorded.get("sha256") != claims.sha256:
        raise ConfigError(f"holdout '{claims.name}' recorded claims with hash {recorded.get('sha256', '?')[:12]}, "
                          f"this file has {claims.sha256[:12]}: claims are fixed before the data; state new claims "
                          "under a new name, on fresh seeds")
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    if recorded and done >= len(claims.arms) * len(claims.seeds):
        raise ConfigError(f"holdout '{claims.name}' has run these claims on seeds {claims.seeds} already "
                          f"({done} runs): its verdicts stand (dyt-lab study report {claims.name}); new claims "
                          "need a new name and fresh seeds")
