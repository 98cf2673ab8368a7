"""The claims file of a pre-registered holdout: each headline claim, stated before the run that tests it.

A registered report fixes its claims, its analysis and its data before the data exist. A claims file does
the same for ``dyt-lab study holdout CLAIMS.yaml``: the arms with their exact settings (the configurations
a search chose, written out), each claim (which arm against which, and the direction or the margin), the
metric, how the arms were selected, and seeds that no study of the family has used. Its SHA-256 is
recorded in the holdout's storage before the first run, and the report marks the holdout's verdicts
*confirmatory*: nothing else on the page may be. Parsed by jsonargparse, as study files are::

    name: pointwise_vs_batchnorm
    family: [tuned_arms_fashion_mnist]       # studies (and NAME.* below them) whose seeds it must not reuse
    selection: each arm's best mean val/acc in tuned_arms_fashion_mnist.ARM (12 configurations x seeds 0-1)
    base: {configs: [configs/experiments/bn_factors_mnist5k.yaml, configs/data/fashion_mnist_testbed.yaml]}
    arms:
      batchnorm: {overrides: {model.norm: batchnorm, model.optimizer.lr: 0.004}}
      pointwise: {overrides: {model.norm: {name: dyt_general, center: none}, model.optimizer.lr: 0.01}}
    claims:
      - {name: pointwise_matches_bn, arm: pointwise, against: batchnorm, test: equivalent}
    seeds: [100, 101, 102, 103, 104, 105, 106, 107, 108, 109]
    margin: 0.005
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.margin import DEFAULT_MARGIN, check_margin
from dyt_lab.study.definition.study_file import NAME_PATTERN, Arm, Base, one_line, register_data_types

TESTS = ("equivalent", "better", "worse")  # a claim's test: TOST within +-margin, or a one-way difference
CLAIMS_FILE = "claims.yaml"  # the claims file as it ran, in the holdout's folder


@dataclass
class Claim:
    """One claim: ``arm`` against ``against`` on the claims file's metric.

    Args:
        name: a short name, used in the report's table.
        arm: the arm the claim is about.
        against: the arm it is compared with (higher metric is better).
        test: equivalent (the difference lies within +-margin, TOST), better or worse (a difference test).
        statement: the sentence the claim would put on the findings page, if confirmed.
    """

    name: str
    arm: str
    against: str
    test: Literal["equivalent", "better", "worse"] = "equivalent"
    statement: str = ""


@dataclass
class ClaimsFile:
    """A pre-registered holdout: arms, claims, metric, seeds and selection rule, fixed before its run.

    Args:
        name: the holdout study's name (its folder under root).
        family: studies whose seeds the holdout must not reuse; a name also covers NAME.* (its arms and
            confirmations).
        selection: how each arm's settings were chosen (which study, which rule), written before the run.
        base: the fit configs every arm starts from.
        arms: arm name -> its configs and fixed keys (its exact settings; no searched keys).
        claims: the claims, tested as one family (Holm).
        seeds: fresh seeds, each run once per arm, paired.
        metric: test/acc: each run's best checkpoint on the test split, image by image.
        margin: equivalence margin in accuracy (0.005: half a point).
        root: folder holding one folder per study.
        storage: sqlite, journal, a journal file path or a database URL.
        workers: processes running trials at once.
    """

    name: str
    family: list[str]
    selection: str
    base: Base
    arms: dict[str, Arm]
    claims: list[Claim]
    seeds: list[int]
    metric: Literal["test/acc"] = "test/acc"
    margin: float = DEFAULT_MARGIN
    root: str = "studies"
    storage: str = "journal"
    workers: int = 1
    text: str = field(default="", repr=False)  # the file as written, whose hash is recorded

    @property
    def sha256(self) -> str:
        """The hash of the claims file's text: what the storage records before the first run."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_claims(path: str, argv: list[str] | None = None) -> ClaimsFile:
    """Parse and check a claims file, or raise a one-line ConfigError naming the value and what is valid."""
    from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

    if not Path(path).is_file():
        raise ConfigError(f"claims file '{path}' is not a file; give a YAML file such as "
                          "configs/holdout/pointwise_vs_batchnorm.yaml")
    register_data_types()
    parser = ArgumentParser(prog="dyt-lab study holdout", exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(ClaimsFile, fail_untyped=True, sub_configs=True, skip={"text"})
    try:
        cfg = parser.parse_args(["--config", path, *(argv or [])])
    except ArgumentError as err:
        raise ConfigError(f"claims file '{path}': {one_line(err)}") from None
    values = parser.instantiate(cfg).as_dict()
    values.pop("config", None)
    values["base"] = values["base"] if isinstance(values["base"], Base) else Base(**values["base"])
    values["arms"] = {k: a if isinstance(a, Arm) else Arm(**a) for k, a in values["arms"].items()}
    values["claims"] = [c if isinstance(c, Claim) else Claim(**c) for c in values["claims"]]
    claims = ClaimsFile(**values, text=Path(path).read_text())
    check_claims(claims, path)
    return claims


def check_claims(claims: ClaimsFile, path: str) -> None:
    """Refuse a claims file no holdout can run, one line each (seeds used elsewhere: ``engine/holdout.py``)."""
    where = f"claims file '{path}'"
    if not NAME_PATTERN.fullmatch(claims.name):
        raise ConfigError(f"{where}: name '{claims.name}' must be letters, digits, '_', '-' or '.'")
    if not claims.selection.strip():
        raise ConfigError(f"{where}: selection is empty; say how each arm's settings were chosen, before the run")
    if len(claims.arms) < 2:
        raise ConfigError(f"{where}: arms has {len(claims.arms)} arm(s); a claim compares two")
    for arm_name, arm in claims.arms.items():
        if not NAME_PATTERN.fullmatch(arm_name):
            raise ConfigError(f"{where}: arm name '{arm_name}' must be letters, digits, '_', '-' or '.'")
        if arm.search_space:
            raise ConfigError(f"{where}: arms.{arm_name}.search_space is set; a holdout's arms are exact "
                              "settings: write the chosen values under overrides")
    for path_ in [*claims.base.configs, *(c for arm in claims.arms.values() for c in arm.configs)]:
        if not Path(path_).is_file():
            raise ConfigError(f"{where}: config '{path_}' is not a file")
    if not claims.claims:
        raise ConfigError(f"{where}: claims is empty; state at least one claim")
    names = [c.name for c in claims.claims]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: claim names repeat: {names}")
    for claim in claims.claims:
        for role in ("arm", "against"):
            if getattr(claim, role) not in claims.arms:
                raise ConfigError(f"{where}: claim '{claim.name}' {role} '{getattr(claim, role)}' is not an arm; "
                                  f"arms: {', '.join(claims.arms)}")
        if claim.arm == claim.against:
            raise ConfigError(f"{where}: claim '{claim.name}' compares arm '{claim.arm}' with itself")
    try:
        margin = check_margin(claims.margin)
    except ValueError as err:
        raise ConfigError(f"{where}: margin: {err}") from None
    if margin <= 0:
        raise ConfigError(f"{where}: margin {claims.margin} must be > 0: an equivalence claim needs a margin, "
                          "e.g. 0.005 (half a point)")
    if len(claims.seeds) < 2 or len(set(claims.seeds)) != len(claims.seeds):
        raise ConfigError(f"{where}: seeds {claims.seeds} must be two or more distinct integers (10 or more "
                          "to resolve half a point)")
    if not claims.family:
        raise ConfigError(f"{where}: family is empty; name the studies whose seeds chose the arms")
