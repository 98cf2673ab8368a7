"""``dyt-lab study confirm NAME --top K --seeds 10..14 [--per FACTOR]``: measure a study's winners on fresh seeds.

A search picks its best configurations on the seeds that also measure them, so their estimates are
biased upward (the winner's curse). Confirming reruns the K best configurations and the study's best
reference configuration (or, with ``--per name``, the K best of each norm: every arm at its best) on
fresh seeds, as a study of its own, ``NAME.confirm``: a sibling folder with its own storage file (or,
for a database, the same database under that name). It is an ordinary seeded study, so it resumes
(run the same command again) and survives ``kill -9``; every run tests its best checkpoint on the
held-out split, and ``dyt-lab study report NAME`` shows both stages side by side.

Two variants run as studies of their own, ``NAME.confirm.TAG``, reported with ``dyt-lab study report
NAME.confirm.TAG``:

- elsewhere (``--tag fashion_mnist --config configs/data/fashion_mnist_testbed.yaml``, or
  ``--base.overrides.trainer.max_epochs=40``): the same winners, with one more fit config file after
  the search's and fixed keys over them: does the winner hold on other data, or a longer budget?
- ``--ablate`` (tag ``ablation``): the best configuration and each of its one-factor neighbours (every
  other level of every categorical key, one key at a time), compared with the best itself: what each
  of its choices contributes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import optuna
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from dyt_lab.errors import ConfigError
from dyt_lab.study.attributes import CONFIG, CONFIRMS, DESIGN, SEED
from dyt_lab.study.definition.design import factor_levels, trial_levels
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.definition.storage import find_storage, load_existing
from dyt_lab.study.definition.study_file import (
    NAME_PATTERN,
    SPEC_FILE,
    Pruner,
    Sampler,
    StudySpec,
    confirmation_name,
    load_spec,
)
from dyt_lab.study.engine.replicates import configuration_key
from dyt_lab.study.trial.protocol import SEED_KEY


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
        entry["seeds"].append(trial.user_attrs.get(SEED))
    for entry in found.values():
        entry["mean"] = sum(entry["values"]) / len(entry["values"])
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    return sorted(found.values(), key=lambda e: sign * e["mean"])


def search_seeds(study: optuna.Study) -> set[int]:
    """The seeds the search ran: its seed attributes, or the seed_everything of its runs' configs."""
    seeds = set()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get(SEED) is not None:
            seeds.add(int(trial.user_attrs[SEED]))
        elif Path(str(trial.user_attrs.get(CONFIG))).is_file():
            seed = yaml.safe_load(Path(trial.user_attrs[CONFIG]).read_text()).get(SEED_KEY)
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


def neighbours(best: dict, space: SearchSpace) -> list[dict]:
    """The one-factor neighbours of ``best`` (Optuna params): each other choice of each categorical key in turn.

    Numeric keys (alpha0, the learning rate) keep the best's values, so each neighbour differs from it in
    exactly one choice; the levels are decoded as a search entry's are, for the report.
    """
    found = []
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            for label in dist.choices:
                if key in best["params"] and str(label) != str(best["params"][key]):
                    params = {**best["params"], key: label}
                    found.append({"params": params, "levels": factor_levels(space.configuration(params).values),
                                  "mean": None, "seeds": []})
    return found


def categorical_levels(params: dict, space: SearchSpace) -> dict:
    """The varied factor levels of the categorical keys of ``params``: a cell of the design, usable as a reference."""
    levels = {}
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution) and key in params:
            per_choice = [factor_levels({key: value}) for value in space.choices(key)]
            mine = factor_levels({key: space.configuration({key: params[key]}).values[key]})
            levels.update({f: v for f, v in mine.items() if len({str(c.get(f)) for c in per_choice}) > 1})
    return levels


def confirm_spec(parent: StudySpec, seeds: list[int], n_configurations: int, workers: int | None,
                 tag: str | None = None) -> StudySpec:
    """The confirm study: the parent's runs and search space, its chosen configurations on fresh seeds.

    Every trial is queued with fixed values, so the sampler never chooses one (random is the cheapest that
    honours them); no pruning, since a confirmation measures each configuration to its end.
    """
    name = confirmation_name(parent.study_name, tag)
    return replace(parent, study_name=name, seeds=seeds, n_trials=n_configurations,
                   sampler=Sampler(name="random", seed=0), pruner=Pruner(name="none"), gap_from=None,
                   timeout=None, workers=workers or parent.workers)


def check_same_setting(spec: StudySpec) -> None:
    """Refuse to resume a confirmation whose base configs or fixed keys this command would change.

    Its runs so far ran in the saved setting; new ones in another would mix two settings in one study.
    """
    saved = spec.folder / SPEC_FILE
    if saved.is_file():
        before = load_spec(["--config", str(saved)], prog="dyt-lab study confirm").base
        if (before.configs, dict(before.overrides)) != (spec.base.configs, dict(spec.base.overrides)):
            raise ConfigError(f"study '{spec.study_name}' ran with base configs {before.configs} and overrides "
                              f"{dict(before.overrides)}; this command asks for {spec.base.configs} and "
                              f"{dict(spec.base.overrides)}: give another --tag for another setting")


DEFAULT_TOP, DEFAULT_SEEDS = 3, "10..14"


def shown_seeds(seeds: list[int]) -> str:
    """Seeds as --seeds takes them: ``10..14`` for a run of consecutive seeds, else ``10,12``."""
    if len(seeds) > 1 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}"
    return ",".join(map(str, seeds))


def asked_flags(ask: dict, default_seeds: bool = False) -> str:
    """A confirmation's choice as its flags: ``--top 2 --per name --seeds 10..11`` (``--ablate --seeds ...``)."""
    flags = "--ablate" if ask["ablate"] else f"--top {ask['top']}" + (f" --per {ask['per']}" if ask["per"] else "")
    return f"{flags} --seeds {shown_seeds(ask['seeds'])}" + (" (the default)" if default_seeds else "")


def previous_ask(spec: StudySpec) -> dict | None:
    """What an existing confirmation ran with (``top``, ``per``, ``ablate``, ``seeds``) and its record; None if new."""
    from dyt_lab.study.engine.precheck import existing_study

    study = existing_study(spec)
    record = study.user_attrs.get(CONFIRMS) if study is not None else None
    if not record:
        return None
    seeds = [int(s) for s in (study.user_attrs.get(DESIGN) or {}).get("seeds") or []]
    return {"top": record.get("top"), "per": record.get("per"), "ablate": bool(record.get("ablate")),
            "seeds": seeds, "record": record}


def same_ask(before: dict, ask: dict) -> bool:
    """Whether two confirmations choose the same: the same seeds, and --ablate, or the same --top and --per."""
    if before["ablate"] != ask["ablate"] or sorted(before["seeds"]) != sorted(ask["seeds"]):
        return False
    return ask["ablate"] or (before["top"], before["per"]) == (ask["top"], ask["per"])


def check_options(top: int | None, workers: int | None, ablate: bool) -> None:
    """The option values no confirmation can run with, one line each, before the study is read."""
    if ablate and top is not None:
        raise ConfigError(f"--ablate with --top {top}: --ablate runs the best configuration and each of its "
                          "one-factor neighbours; leave out --top")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: give 1 or more (processes running trials at once)")


def confirm(name: str, top: int | None = None, seeds_text: str | None = None, root: str = "studies",
            storage: str | None = None, workers: int | None = None, per: str | None = None, tag: str | None = None,
            config: str | None = None, overrides: dict[str, str] | None = None, ablate: bool = False,
            extend: bool = False) -> None:
    """Check everything, then create (or resume) ``NAME.confirm`` (or ``NAME.confirm.TAG``) and run it to its end.

    ``config`` (a fit config file) and ``overrides`` (dotted key -> value) change the setting the winners
    run in, after the search's own; ``ablate`` runs the best configuration and its one-factor neighbours.
    An existing confirmation resumes; one asked to choose otherwise (``top``, ``per``, ``ablate``, seeds) is
    refused unless ``extend``, which adds the new configurations and seeds to it.
    """
    from dyt_lab.study.engine.runner import run_study

    check_options(top, workers, ablate)
    top = DEFAULT_TOP if top is None and not ablate else top
    seeds = parse_seeds(seeds_text or DEFAULT_SEEDS)
    tag = tag or ("ablation" if ablate else None)
    if (config or overrides) and not tag:
        raise ConfigError("--config and --base.overrides.* change the setting: give --tag NAME (e.g. --tag "
                          "fashion_mnist), so the confirmation is a study of its own, NAME.confirm.TAG")
    if tag is not None and not NAME_PATTERN.fullmatch(tag):
        raise ConfigError(f"--tag '{tag}' must be letters, digits, '_', '-' or '.'")
    if config is not None and not Path(config).is_file():
        raise ConfigError(f"--config '{config}' is not a file; give a dyt-lab fit config, e.g. "
                          "configs/data/fashion_mnist_testbed.yaml")
    saved = Path(root) / name / SPEC_FILE
    if not saved.is_file():
        raise ConfigError(f"no study '{name}' to confirm: {saved} does not exist (run it first)")
    parent = load_spec(["--config", str(saved)], prog="dyt-lab study confirm")
    study = load_existing(name, find_storage(name, root, storage))
    space = SearchSpace(parent.search_space)
    if ablate:
        if per is not None:
            raise ConfigError("--ablate takes the single best configuration: leave out --per")
        best = choose(study, space, 1, parent.reference)[0]
        chosen = [best, *neighbours(best, space)]
        if len(chosen) == 1:
            raise ConfigError(f"--ablate: study '{name}' has no categorical key with a second choice, so its best "
                              "configuration has no one-factor neighbour to run")
    else:
        chosen = choose(study, space, top, parent.reference, per)
    searched = search_seeds(study)  # reads each run's config where the study has no seed attributes: once
    if overlap := sorted(set(seeds) & searched):
        raise ConfigError(f"--seeds {seeds_text or DEFAULT_SEEDS} overlaps the seeds the search ran ({overlap}); "
                          f"fresh seeds must differ from {sorted(searched)}")
    spec = confirm_spec(parent, seeds, len(chosen), workers, tag)
    spec.root = root
    if storage:
        spec.storage = storage
    spec.base = replace(parent.base, configs=[*parent.base.configs, *([config] if config else [])],
                        overrides={**parent.base.overrides, **(overrides or {})})
    check_same_setting(spec)
    queued = [{"params": e["params"], "levels": e["levels"], "search_mean": e["mean"], "search_seeds": e["seeds"]}
              for e in chosen]
    ask = {"top": 1 if ablate else top, "per": per, "ablate": ablate, "seeds": seeds}
    record = {"study": name, "top": ask["top"], "per": per, "ablate": ablate, "config": config,
              "overrides": overrides or {}}
    before = previous_ask(spec)
    if before is not None and not same_ask(before, ask) and not extend:
        raise ConfigError(f"study '{spec.study_name}' ran with {asked_flags(before)}; this command asks for "
                          f"{asked_flags(ask, seeds_text is None)}: run it as it ran to resume it, or add --extend "
                          "to add the new configurations and seeds to it")
    if before is not None and extend:
        queued, record = extended(spec, before, ask, queued, record)
    elif before is not None:  # resumed: the configurations it chose, even if the search has found others since
        queued, record = before["record"].get("configurations") or queued, {**before["record"], **record}
    spec.n_trials = len(queued)
    if ablate:  # each neighbour's paired difference to the best: what that one choice is worth
        spec.reference = categorical_levels(queued[0]["params"], space)
    run_study(spec, queue=[q["params"] for q in queued],
              attrs={CONFIRMS: {**record, "configurations": json.loads(json.dumps(queued, default=str))}})


def extended(spec: StudySpec, before: dict, ask: dict, queued: list[dict], record: dict) -> tuple[list[dict], dict]:
    """``--extend``: the confirmation's configurations and seeds, then those this command adds (spec updated)."""
    old = before["record"].get("configurations") or []
    key = lambda entry: json.dumps(entry["params"], sort_keys=True, default=str)  # noqa: E731  (as stored)
    added = [q for q in queued if key(q) not in {key(o) for o in old}]
    new_seeds = [s for s in ask["seeds"] if s not in before["seeds"]]
    spec.seeds = [*before["seeds"], *new_seeds]
    if not ask["ablate"] and ask["per"] == before["per"]:  # the union of two top-K lists is the larger one
        record["top"] = max(int(before["top"]), int(ask["top"]))
    record["extended_from"] = [*before["record"].get("extended_from", []),
                               {k: before[k] for k in ("top", "per", "ablate", "seeds")}]
    print(f"study {spec.study_name}: extending it from {asked_flags(before)} with {asked_flags(ask)}: "
          f"{len(added)} more configuration{'s' if len(added) != 1 else ''}, "
          f"{len(new_seeds)} more seed{'s' if len(new_seeds) != 1 else ''}", flush=True)
    return [*old, *added], record
