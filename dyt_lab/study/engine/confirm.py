"""``dyt-lab study confirm NAME --top K --seeds 10..14 [--per FACTOR]``: measure a study's winners on fresh seeds.

A search picks its best configurations on the seeds that also measure them, so their estimates are
biased upward (the winner's curse). Confirming reruns the K best configurations and the study's best
reference configuration (or, with ``--per name``, the K best of each norm: every arm at its best) on fresh seeds, as a study of its own, ``NAME.confirm``: a sibling folder with its
own storage file (or, for a database, the same database under that name). It is an ordinary seeded
study, so it resumes (run the same command again) and survives ``kill -9``; every run tests its best
checkpoint on the held-out split, and ``dyt-lab study report NAME`` shows both stages side by side.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.design import trial_levels
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.definition.storage import find_storage, load_existing
from dyt_lab.study.definition.study_file import (
    CONFIRM_SUFFIX,
    SPEC_FILE,
    Pruner,
    Sampler,
    StudySpec,
    load_spec,
)
from dyt_lab.study.engine.replicates import configuration_key
from dyt_lab.study.trial.protocol import SEED_ATTR

CONFIRMS_ATTR = "confirms"  # study attribute of NAME.confirm: which study, which configurations, which seeds


def parse_seeds(text: str) -> list[int]:
    """``10..14`` (inclusive) or ``10,11,12`` -> a list of distinct seeds, or a one-line ConfigError."""
    try:
        if ".." in text:
            first, last = (int(part) for part in text.split("..", 1))
            seeds = list(range(first, last + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds '{text}': give a range like 10..14 or a list like 10,11,12") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds '{text}': give at least one seed, each once (e.g. 10..14)")
    return seeds


def matches(levels: dict, cell: dict | None) -> bool:
    """Whether a configuration's factor levels are those of ``cell`` (compared as text)."""
    return bool(cell) and all(str(levels.get(k)) == str(v) for k, v in cell.items())


def ranked_configurations(study: optuna.Study, space: SearchSpace) -> list[dict]:
    """Completed configurations, best mean first: params, factor levels, seeds and mean of the objective."""
    found: dict[str, dict] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        entry = found.setdefault(configuration_key(trial), {"params": dict(trial.params), "values": [], "seeds": [],
                                                            "levels": trial_levels(trial, space)})
        entry["values"].append(trial.value)
        entry["seeds"].append(trial.user_attrs.get(SEED_ATTR))
    for entry in found.values():
        entry["mean"] = sum(entry["values"]) / len(entry["values"])
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(found.values(), key=lambda e: sign * e["mean"])


def search_seeds(study: optuna.Study) -> set[int]:
    """The seeds the search ran: its seed attributes, or the seed_everything of its runs' configs."""
    seeds = set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get(SEED_ATTR) is not None:
            seeds.add(int(trial.user_attrs[SEED_ATTR]))
        elif Path(str(trial.user_attrs.get("config"))).is_file():
            seed = yaml.safe_load(Path(trial.user_attrs["config"]).read_text()).get("seed_everything")
            seeds.update([int(seed)] if isinstance(seed, int) else [])
    return seeds


def choose(study: optuna.Study, space: SearchSpace, top: int, reference: dict | None, per: str | None = None) -> list[dict]:
    """The ``top`` best configurations that are not the reference, then the reference at its best.

    With ``per`` (a factor, such as the norm's ``name``), the ``top`` best of each of its levels instead:
    every arm at its own best, the reference's arm included.
    """
    ranked = ranked_configurations(study, space)
    if not ranked:
        raise ConfigError(f"study '{study.study_name}' has no completed trial to confirm")
    if per is not None:
        factors = sorted({k for e in ranked for k in e["levels"]})
        if per not in factors:
            raise ConfigError(f"--per '{per}' is not a factor of study '{study.study_name}'; factors: "
                              f"{', '.join(factors)}")
        arms: dict[str, list[dict]] = {}
        for entry in ranked:  # best first, so each arm's list is best first too
            arms.setdefault(str(entry["levels"].get(per)), []).append(entry)
        if top < 1:
            raise ConfigError(f"--top {top}: give --top 1 or more")
        return [e for entries in arms.values() for e in entries[:top]]
    contenders = [e for e in ranked if not matches(e["levels"], reference)]
    if not 1 <= top <= len(contenders):
        raise ConfigError(f"--top {top}: study '{study.study_name}' has {len(contenders)} completed "
                          f"configurations besides its reference; give --top 1..{len(contenders)}")
    chosen = contenders[:top]
    references = [e for e in ranked if matches(e["levels"], reference)]
    return chosen + references[:1]


def confirm_spec(parent: StudySpec, seeds: list[int], n_configurations: int, workers: int | None) -> StudySpec:
    """The confirm study: the parent's runs and search space, its chosen configurations on fresh seeds.

    Every trial is queued with fixed values, so the sampler never chooses one (random is the cheapest that
    honours them); no pruning, since a confirmation measures each configuration to its end.
    """
    return replace(parent, study_name=f"{parent.study_name}{CONFIRM_SUFFIX}", seeds=seeds, n_trials=n_configurations,
                   sampler=Sampler(name="random", seed=0), pruner=Pruner(name="none"), gap_from=None,
                   timeout=None, workers=workers or parent.workers)


def confirm(name: str, top: int, seeds_text: str, root: str = "studies", storage: str | None = None,
            workers: int | None = None, per: str | None = None) -> None:
    """Check everything, then create (or resume) ``NAME.confirm`` and run it to its end."""
    from dyt_lab.study.engine.runner import run_study

    seeds = parse_seeds(seeds_text)
    saved = Path(root) / name / SPEC_FILE
    if not saved.is_file():
        raise ConfigError(f"no study '{name}' to confirm: {saved} does not exist (run it first)")
    parent = load_spec(["--config", str(saved)], prog="dyt-lab study confirm")
    study = load_existing(name, find_storage(name, root, storage))
    chosen = choose(study, SearchSpace(parent.search_space), top, parent.reference, per)
    searched = search_seeds(study)  # reads each run's config where the study has no seed attributes: once
    if overlap := sorted(set(seeds) & searched):
        raise ConfigError(f"--seeds {seeds_text} overlaps the seeds the search ran ({overlap}); fresh seeds "
                          f"must differ from {sorted(searched)}")
    spec = confirm_spec(parent, seeds, len(chosen), workers)
    spec.root = root
    if storage:
        spec.storage = storage
    queued = [{"params": e["params"], "levels": e["levels"], "search_mean": e["mean"], "search_seeds": e["seeds"]}
              for e in chosen]
    run_study(spec, queue=[q["params"] for q in queued],
              attrs={CONFIRMS_ATTR: {"study": name, "top": top, "per": per, "configurations": json.loads(json.dumps(queued,
                                                                                                    default=str))}})
