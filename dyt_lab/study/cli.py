"""``dyt-lab study run | resume | report | confirm | compare``: the command line of the study subsystem."""

from __future__ import annotations

from pathlib import Path

from dyt_lab.errors import ConfigError, check_writable
from dyt_lab.parse_errors import flag_values

USAGE = """\
usage: dyt-lab study run --config configs/study/NAME.yaml [--KEY VALUE ...] [--workers N]
       dyt-lab study resume NAME [--root studies] [--KEY VALUE ...]
       dyt-lab study report NAME [--root studies] [--storage URL] [--margin 0.005]
       dyt-lab study confirm NAME --top K --seeds 10..14|auto [--max_seeds N --batch 5] [--per FACTOR] [--workers N]
                             [--tag TAG [--config FIT.yaml] [--base.overrides.KEY=VALUE ...]] [--ablate]
       dyt-lab study compare NAME AGAINST [--root studies] [--margin 0.005]
       dyt-lab study holdout CLAIMS.yaml [--workers N] [--family_root DIR]

  run      check the study file and its configs, then run trials until the study has n_trials;
           the same command again resumes it. Any key of the study file is a flag
           (--n_trials 40, --sampler.name random, --storage journal); see `dyt-lab study run --help`.
  resume   continue a study from the study.yaml saved in its folder (flags override it).
  report   print the trials table, the best trial, importances; write report.md, trials.csv, plots.
  confirm  rerun the K best configurations and the reference on fresh seeds (study NAME.confirm), each
           tested on the held-out split; the report of NAME then shows both stages. Again: resumes.
           --tag TAG with --config / --base.overrides.*: the same winners in another setting (other data,
           a longer budget), study NAME.confirm.TAG; --ablate: the best and each of its one-factor
           neighbours, study NAME.confirm.ablation.
  compare  pair every configuration of study NAME with the best of study AGAINST, seed by seed (two
           confirmations on the same fresh seeds): the difference, its interval and verdict.
  holdout  run a pre-registered holdout: the claims file's arms on its fresh seeds (refused if a study of
           its family ran them, or if these claims ran before), then each claim's confirmatory verdict,
           with seed-only and seeds x images intervals. Again: resumes.
"""


def _parse(command: str, description: str, argv: list[str], **options: dict):
    """``dyt-lab study COMMAND NAME [--root] [--storage]`` plus ``options`` (flag -> add_argument kwargs)."""
    from jsonargparse import ArgumentError, ArgumentParser

    from dyt_lab.study.definition.study_file import one_line

    parser = ArgumentParser(prog=f"dyt-lab study {command}", exit_on_error=False, description=description)
    parser.add_argument("name", type=str, help="the study's name")
    parser.add_argument("--root", type=str, default="studies", help="folder holding one folder per study")
    parser.add_argument("--storage", type=str | None, default=None,
                        help="the study's storage (database URL or journal file); default: its folder's file")
    for flag, kwargs in options.items():
        parser.add_argument(f"--{flag}", **kwargs)
    try:
        return parser.parse_args(argv)
    except ArgumentError as err:
        raise ConfigError(f"study {command}: {one_line(err)}") from None


REPORT_OPTIONS = {"margin": {"type": float | None, "default": None,
                             "help": "equivalence margin in the metric's units (default: the study file's margin)"}}
CONFIRM_OPTIONS = {
    "top": {"type": int | None, "default": None, "help": "how many of its best configurations to confirm (default 3)"},
    "seeds": {"type": str | None, "default": None,
              "help": "fresh seeds: a range 10..14 or a list 10,11,12 (default 10..14)"},
    "workers": {"type": int | None, "default": None, "help": "processes, 1 or more (default: the study's)"},
    "per": {"type": str | None, "default": None,
            "help": "a factor (e.g. name): confirm the top K of each of its levels, every arm at its best"},
    "tag": {"type": str | None, "default": None,
            "help": "run as study NAME.confirm.TAG (needed with --config or --base.overrides.KEY=VALUE)"},
    "config": {"type": str | None, "default": None,
               "help": "one more dyt-lab fit config file after the search's (other data, say)"},
    "ablate": {"action": "store_true",
               "help": "the best configuration and each of its one-factor neighbours (study NAME.confirm.ablation)"},
    "max_seeds": {"type": int | None, "default": None,
                  "help": "with --seeds auto: the most fresh seeds to run, in batches, until every comparison is decided"},
    "batch": {"type": int, "default": 5, "help": "with --seeds auto: fresh seeds added at each look"},
    "extend": {"action": "store_true",
               "help": "add the configurations and seeds this command asks for to an existing confirmation "
                       "(without it, a confirmation asked to choose otherwise than it ran is refused)"},
}


def run_arms_or_study(spec) -> None:
    """Run a study, or each arm of a study tuned arm by arm (``arms``) in turn, as study NAME.ARM.

    The arms' study file is kept in NAME/, where ``study resume NAME`` and ``study report NAME`` find it.
    """
    import yaml

    from dyt_lab.study.definition.study_file import SPEC_FILE, arm_specs
    from dyt_lab.study.engine.runner import run_study

    arms = arm_specs(spec)
    if not arms:
        run_study(spec)
        return
    spec.folder.mkdir(parents=True, exist_ok=True)
    check_writable(spec.folder, "study folder", f"the arms' study file {SPEC_FILE} is kept there")
    (spec.folder / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    for arm in arms:
        print(f"study {spec.study_name}: arm {arm.study_name} ({spec.n_trials} configurations"
              + (f" x {len(spec.seeds)} seeds" if spec.seeds else "") + ", as every arm)")
        run_study(arm)


def main(argv: list[str]) -> None:
    """Dispatch ``dyt-lab study ...`` (argv without the leading ``study``)."""
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command == "run":
        from dyt_lab.study.definition.study_file import load_spec

        run_arms_or_study(load_spec(rest))
    elif command == "resume":
        from dyt_lab.study.definition.study_file import SPEC_FILE, load_spec

        if not rest or rest[0].startswith("-"):
            raise ConfigError("study resume needs the study's name: dyt-lab study resume NAME")
        saved = Path((flag_values(rest, "--root") or ["studies"])[-1]) / rest[0] / SPEC_FILE
        if not saved.is_file():
            raise ConfigError(f"no study '{rest[0]}' to resume: {saved} does not exist")
        run_arms_or_study(load_spec(["--config", str(saved), *rest[1:]], prog="dyt-lab study resume"))
    elif command == "report":
        import yaml

        from dyt_lab.study.definition.claims import CLAIMS_FILE
        from dyt_lab.study.definition.margin import report_margin
        from dyt_lab.study.definition.study_file import SPEC_FILE
        from dyt_lab.study.report.report import report

        args = _parse("report", "Report a study: trials table, best trial, importances, plots.", rest, **REPORT_OPTIONS)
        folder = Path(args.root) / args.name
        if folder.is_dir() or args.storage:  # else the report says there is no such study
            check_writable(folder, "study folder", "the report writes report.md, trials.csv and its plots there")
        arms = (yaml.safe_load((folder / SPEC_FILE).read_text()) or {}).get("arms") if (folder / SPEC_FILE).is_file() \
            else None
        if (folder / CLAIMS_FILE).is_file():  # a holdout: its claims' verdicts, nothing chosen after the fact
            from dyt_lab.study.report.holdout import holdout_report

            holdout_report(args.name, root=args.root, storage=args.storage)
        elif arms:  # a study tuned arm by arm: budgets, bests, edges
            from dyt_lab.study.report.arms import arms_report

            arms_report(args.name, list(arms), root=args.root, margin=report_margin({}, args.margin))
        else:
            report(args.name, root=args.root, storage=args.storage, margin=args.margin)
    elif command == "confirm":
        from dyt_lab.study.definition.study_file import pop_override_flags
        from dyt_lab.study.engine.confirm import confirm

        rest, overrides = pop_override_flags(rest)
        args = _parse("confirm", "Rerun a finished study's best configurations and its reference on fresh seeds.",
                      rest, **CONFIRM_OPTIONS)
        options = dict(workers=args.workers, per=args.per, tag=args.tag, config=args.config, overrides=overrides,
                       ablate=args.ablate)
        if args.seeds == "auto":  # looks until decided, each at the level an alpha-spending rule releases
            from dyt_lab.study.engine.sequential import confirm_until_decided

            if args.extend:
                raise ConfigError("--seeds auto extends the confirmation look by look: leave out --extend")
            confirm_until_decided(args.name, args.top, args.max_seeds, args.batch, root=args.root,
                                  storage=args.storage, **options)
        elif args.max_seeds is not None or args.batch != 5:
            raise ConfigError("--max_seeds and --batch go with --seeds auto (fresh seeds until every comparison is "
                              "decided); with fixed --seeds, leave them out")
        else:
            confirm(args.name, args.top, args.seeds, root=args.root, storage=args.storage, extend=args.extend,
                    **options)
    elif command == "compare":
        from dyt_lab.study.report.compare import compare

        if len(rest) < 2 or any(a.startswith("-") for a in rest[:2]):
            raise ConfigError("study compare needs two studies: dyt-lab study compare NAME AGAINST "
                              "(e.g. bn_free_search.confirm bn_free_search_reference.confirm)")
        if rest[0] == rest[1]:
            raise ConfigError(f"study compare {rest[0]} {rest[1]}: a study against itself pairs every run with "
                              "itself; give two studies (e.g. NAME.confirm OTHER.confirm)")
        args = _parse("compare", "Pair every configuration of one study with the best of another, seed by seed.",
                      [rest[0], *rest[2:]], **REPORT_OPTIONS)
        if (Path(args.root) / args.name).is_dir():  # else compare says there is no such study
            check_writable(Path(args.root) / args.name, "study folder", "compare writes its table there")
        compare(args.name, rest[1], root=args.root, storage=args.storage, margin=args.margin)
    elif command == "holdout":
        from dyt_lab.study.engine.holdout import holdout

        if not rest or rest[0].startswith("-"):
            raise ConfigError("study holdout needs a claims file: dyt-lab study holdout CLAIMS.yaml "
                              "(e.g. configs/holdout/pointwise_vs_batchnorm.yaml)")
        workers, family_root = flag_values(rest[1:], "--workers"), flag_values(rest[1:], "--family_root")
        unknown = [a for a in rest[1:] if a.startswith("-") and a.split("=")[0] not in ("--workers", "--family_root")]
        if unknown:
            raise ConfigError(f"study holdout: unknown flag {unknown[0]}; valid: --workers N, --family_root DIR "
                              "(everything else is fixed in the claims file)")
        if workers and not workers[-1].lstrip("-").isdigit():
            raise ConfigError(f"--workers {workers[-1]!r} is not an integer; give e.g. --workers 2")
        if family_root and not Path(family_root[-1]).is_dir():
            raise ConfigError(f"--family_root '{family_root[-1]}' is not a folder; give the folder that holds the "
                              "family's study folders (e.g. docs/results)")
        holdout(rest[0], workers=int(workers[-1]) if workers else None,
                family_root=family_root[-1] if family_root else None)
    elif command == "_worker":  # started by `run --workers N`, not by people
        from dyt_lab.study.engine.pool import run_worker

        run_worker(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
    elif command in (None, "-h", "--help", "help"):
        print(USAGE)
    else:
        raise ConfigError(f"unknown study command '{command}'; valid: run, resume, report, confirm, compare, holdout "
                          "(dyt-lab study --help)")
