"""Before the first trial: build the base config and every sampled key as ``dyt-lab fit`` builds them.

Each key is set to representative values (low and high, every categorical choice) and the run is
built at each of them through ``BuildCLI``, Trainer included, so a typo, a value of the wrong type,
a placement preset that matches no site of this model, or a trainer setting Lightning refuses costs
seconds now rather than a night of failed trials. The built Trainers also say whether trials run DDP.
An objective metric that a dyt_lab model never logs (``val/accuracy``) is refused here too, and a study
that exists already is refused if this study file changes its objective or its search space.
"""

from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, distribution_to_json, json_to_distribution
from optuna.trial import TrialState

from dyt_lab.config_keys import known_keys, short_key
from dyt_lab.errors import ConfigError, cause_of_type
from dyt_lab.study.attributes import OBJECTIVE, SEARCH_SPACE
from dyt_lab.study.definition.space import SearchSpace, config_flag
from dyt_lab.study.definition.storage import is_journal, open_storage, storage_url, study_names
from dyt_lab.study.definition.study_file import TRIALS, Objective, StudySpec, one_line
from dyt_lab.study.engine.build import build
from dyt_lab.study.engine.objective import base_args, study_args


def check_devices(cli, gpus: int, workers: int, what: str) -> None:
    """Refuse a trial that asks for more GPUs than its worker gets.

    The Trainer was built here, where every visible GPU counts; a worker of several sees only its share.
    """
    # Imported here: the runner imports Lightning while its fork server starts, not before
    from lightning.pytorch.accelerators import CPUAccelerator

    trainer = cli.trainer
    if gpus == 0 or workers == 1 or isinstance(trainer.accelerator, CPUAccelerator):
        return
    per_worker = max(1, gpus // workers)
    asked = cli.config.trainer.devices
    if trainer.num_devices > per_worker and str(asked) not in ("auto", "-1"):  # these two take the share
        raise ConfigError(f"{what}: trainer.devices={asked} asks for {trainer.num_devices} GPUs but each of the "
                          f"{workers} workers has {per_worker} ({gpus} visible); lower --workers or trainer.devices")


def runs_ddp(trainer) -> bool:
    """Whether a built Trainer starts processes of its own: DDP over several devices or nodes, a spawn strategy."""
    return trainer.strategy.launcher is not None


def check_trials(spec: StudySpec, space: SearchSpace, gpus: int, configurations: list[dict] | None = None) -> bool:
    """Raise a one-line ConfigError unless every trial this study can draw builds as ``dyt-lab fit`` builds it.

    Each searched key is built at each of its probe values, the others at the base's; with ``configurations``
    (a study that runs only these, key -> value each: a holdout's arms, whose keys go together), each
    configuration is built whole instead. Returns whether some trial runs DDP (so it must start as a fresh process).
    """
    base = base_args(spec) + study_args(spec, spec.folder / TRIALS / "check")  # built, never written
    run = build(base, "the base config")
    known = known_keys(run.config.as_dict())
    for key in space:
        if short_key(key) not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"search_space key '{key}' is not a key of the base config{hint}; "
                              f"keys look like model.norm, model.optimizer.lr, data.batch_size")
    try:  # missing data fails here once, not in every trial; a download happens once
        run.datamodule.prepare_data()
    except Exception as err:
        cause = cause_of_type(err, (ConfigError,))
        raise ConfigError(f"the base config: {cause if cause else one_line(err)}") from None
    check_objective_metric(spec.objective.metric, run, space)
    check_devices(run, gpus, spec.workers, "the base config")
    ddp = runs_ddp(run.trainer)
    if configurations is not None:
        probes = [(f"configuration {text_of(values)}", [config_flag(k, v) for k, v in values.items()])
                  for values in configurations]
    else:
        probes = [(f"search_space '{key}' = {label!r}", [config_flag(key, value)])
                  for key, values in space.probes().items() for label, value in values]
    for what, flags in probes:
        probe = build(base + flags, what, parser=run.parser)
        check_devices(probe, gpus, spec.workers, what)
        ddp = ddp or runs_ddp(probe.trainer)
    return ddp


def text_of(values: dict) -> str:
    """``model.norm=batchnorm, model.optimizer.lr=0.0189``: a configuration in an error line."""
    return ", ".join(f"{k}={v}" for k, v in values.items())


# The metric prefixes a dyt_lab LightningModule logs under; a name there that it never logs is a typo.
OWN_PREFIXES = ("val/", "train/", "test/")
_LOG_CALL = re.compile(r"\b(?:self|pl_module)\.log(_dict)?\(\s*(f?)(\"[^\"]*\"|'[^']*')?")  # a LightningModule's log


def logged_names(classes: list[type]) -> set[str] | None:
    """Every metric name the modules of ``classes`` pass to ``.log(...)``; None if one could be any name
    under OWN_PREFIXES (``log_dict``, a variable, an f-string such as ``f"val/{x}"``) or a class is not
    dyt_lab's or Lightning's (a user's own model or callback may log anything)."""
    names: set[str] = set()
    for module in {inspect.getmodule(cls) for cls in classes}:
        package = getattr(module, "__name__", "").split(".")[0]
        if package in ("lightning", "torch", "builtins", "abc", "typing"):
            continue
        try:
            source = inspect.getsource(module) if package == "dyt_lab" else None
        except OSError:  # no source to read (an installed bytecode-only copy)
            source = None
        if source is None:
            return None
        for as_dict, is_f, literal in _LOG_CALL.findall(source):
            known = literal[1:-1].split("{")[0] if literal else ""
            if as_dict or ((is_f or not literal) and any(p.startswith(known) or known.startswith(p) for p in OWN_PREFIXES)):
                return None
            names.add(literal[1:-1])
    return names


def check_objective_metric(metric: str, run, space: SearchSpace) -> None:
    """Refuse an objective metric under val/, train/ or test/ that the built model can never have logged when
    a validation epoch ends, where its source says so; anything less certain is left to the trial's own check
    (the first validation epoch), since a false refusal costs more than a late one."""
    if not metric.startswith(OWN_PREFIXES) or any(k == "model" or k.startswith(("model.class_path", "trainer.callbacks"))
                                                  for k in space):
        return
    classes = [*type(run.model).__mro__, *(type(cb) for cb in run.trainer.callbacks)]
    names = logged_names(classes)
    if names is None:
        return
    model = type(run.model).__name__
    fit_names = sorted(n for n in names if n.startswith(OWN_PREFIXES) and not n.startswith("test/"))
    if metric.startswith("test/") and metric in names:
        instead = metric.replace("test/", "val/", 1)
        raise ConfigError(f"objective.metric '{metric}' is logged only by the test after fit, but a trial is judged "
                          f"(and pruned) after each validation epoch: use {instead if instead in names else 'val/acc'} "
                          "(the report shows each trial's test/acc beside it)")
    if metric not in names:
        close = difflib.get_close_matches(metric, fit_names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"objective.metric '{metric}' is not a metric {model} logs{hint}; it logs "
                          f"{', '.join(fit_names)}")


def existing_study(spec: StudySpec) -> optuna.Study | None:
    """The study of this name in this spec's storage, if it exists (a storage file is never created here)."""
    url = storage_url(spec.storage, spec.folder)
    file = url if is_journal(url) else url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if file is not None and not Path(file).is_file():
        return None
    storage = open_storage(url)
    if spec.study_name not in study_names(storage):
        return None
    return optuna.load_study(study_name=spec.study_name, storage=storage)


def check_unchanged(spec: StudySpec, space: SearchSpace) -> None:
    """An existing study keeps the objective its trials were measured by and the search space they were drawn
    from; a study file that changes either is refused in one line naming the change, before anything is written."""
    study = existing_study(spec)
    if study is not None:
        check_same_objective(study, spec.objective)
        check_same_space(study, space)


def check_same_objective(study: optuna.Study, objective: Objective) -> None:
    """The direction never changes (Optuna stores it); the metric and value not once a trial was measured by them."""
    before = study.user_attrs.get(OBJECTIVE) or {}
    direction = study.direction.name.lower()
    was = (before.get("metric"), direction, before.get("value"))
    asked = (objective.metric, objective.direction, objective.value)
    if direction != objective.direction:
        why = "a study's direction cannot change"
    elif before and was != asked and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        why = "its finished trials were measured by the first"
    else:
        return
    shown = lambda parts: ", ".join(str(p) for p in parts if p is not None)  # noqa: E731
    raise ConfigError(f"study '{study.study_name}' was run with objective {shown(was)}; this study file asks for "
                      f"{shown(asked)}: {why}; keep the objective it was run with, or give the new one its own "
                      "--study_name")


def recorded_space(study: optuna.Study) -> dict[str, optuna.distributions.BaseDistribution]:
    """The distributions the study was created with, else (a study from before they were recorded) its trials'."""
    saved = study.user_attrs.get(SEARCH_SPACE)
    if saved:
        return {key: json_to_distribution(text) for key, text in saved.items()}
    recorded: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        for key, dist in trial.distributions.items():
            recorded.setdefault(key, dist)
    return recorded


def space_record(space: SearchSpace) -> dict[str, str]:
    """The search space as the study attribute SEARCH_SPACE records it."""
    return {key: distribution_to_json(dist) for key, dist in space.distributions.items()}


def check_same_space(study: optuna.Study, space: SearchSpace) -> None:
    """An existing study keeps its search space: its points are what a rerun retries and what the report
    compares. Refuse other choices, another kind, log flag or range of a key, and a key added or dropped."""
    if not any(t.params for t in study.get_trials(deepcopy=False)):  # no trial drew values yet: nothing to keep
        return
    recorded = recorded_space(study)
    for key, old in recorded.items():
        new = space.distributions.get(key)
        if new is None or new == old:
            continue
        if isinstance(old, CategoricalDistribution) and isinstance(new, CategoricalDistribution):
            added = [c for c in new.choices if c not in old.choices]
            dropped = [c for c in old.choices if c not in new.choices]
            change = "; ".join(part for part in (f"adds {', '.join(map(str, added))}" if added else "",
                                                 f"drops {', '.join(map(str, dropped))}" if dropped else "") if part)
            what, started = f"other choices for {key}: this study file {change or 'reorders them'}", \
                ", ".join(map(str, old.choices))
        else:
            try:
                optuna.distributions.check_distribution_compatibility(old, new)
                what = f"another range for {key}: this study file has {_shown_distribution(new)}"
            except ValueError as err:
                what = f"another kind of {key} ({err})"
            started = _shown_distribution(old)
        _refuse(study, what, started)
    added, dropped = sorted(set(space.distributions) - set(recorded)), sorted(set(recorded) - set(space.distributions))
    if dropped:
        _refuse(study, f"search_space key {', '.join(dropped)}: this study file drops it", f"keys {', '.join(recorded)}")
    if added:
        _refuse(study, f"other search_space keys: this study file adds {', '.join(added)}", f"keys {', '.join(recorded)}")


def _refuse(study: optuna.Study, what: str, started: str) -> None:
    raise ConfigError(f"study '{study.study_name}' exists with {what}; a study cannot change that: give the new "
                      f"design its own --study_name, or keep what it was started with ({started})")


def _shown_distribution(dist: optuna.distributions.BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return "choices " + ", ".join(map(str, dist.choices))
    kind = "int" if isinstance(dist, optuna.distributions.IntDistribution) else "float"
    step = f", step {dist.step}" if getattr(dist, "step", None) not in (None, 1) else ""
    return f"{kind} {dist.low} to {dist.high}" + step + (", log" if dist.log else "")
