"""The ``dyt-lab`` command: LightningCLI's fit/validate/test/predict, plus study, probe and norms.

Each command imports its own module only when it runs, so ``dyt-lab norms``, ``dyt-lab --help`` or
``dyt-lab study --help`` do not pay Lightning's seconds of import time.
"""

from __future__ import annotations

import difflib
import sys

from dyt_lab.errors import ConfigError, interrupted_quietly, one_line_errors
from dyt_lab.study.trial.protocol import record_failure

# LightningCLI's own --help starts "Lightning Trainer command line tool" and knows its four commands only.
USAGE = """\
usage: dyt-lab COMMAND [ARGS ...]        (dyt-lab COMMAND --help: that command's flags)

dyt-lab: a lab bench for normalization layers (LayerNorm, BatchNorm, RMSNorm, DyT, Derf, ...) in ViTs
and ResNets, with Lightning, Optuna and TensorBoard.

commands:
  fit       train a model: dyt-lab fit --config configs/quickstart.yaml [--model.norm dyt ...]
  validate  score a model (--ckpt_path) on the validation split
  test      score a model (--ckpt_path) on the test split
  predict   predict with a model (--ckpt_path)
  study     Optuna studies of fit runs: run | resume | report | confirm | compare | holdout
  probe     norm diagnostics (input-output curves, saturation, alpha) for a config or a checkpoint
  norms     the norm registry: names, formulas, layouts
"""
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
COMMANDS = (*LIGHTNING_COMMANDS, "study", "probe", "norms")


def check_command(command: str | None) -> None:
    """A missing or unknown command: one line naming it and every dyt-lab command (LightningCLI knows four)."""
    if command is None:
        raise ConfigError(f"give a command: dyt-lab {' | '.join(COMMANDS)} (dyt-lab --help says what each does)")
    if command.startswith("-") or command in COMMANDS:  # options before the command are LightningCLI's
        return
    close = difflib.get_close_matches(command, COMMANDS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown command '{command}'{hint}; dyt-lab commands: {', '.join(COMMANDS)} "
                      "(dyt-lab --help)")


def main(args: list[str] | None = None) -> None:
    """Entry point of ``dyt-lab`` and ``python -m dyt_lab``."""
    argv = list(sys.argv[1:] if args is None else args)
    command = argv[0] if argv else None
    if command in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    # A user mistake or a diverged run is an expected outcome: one line and a non-zero exit code.
    # In a study trial's fit, record_failure also leaves why it failed in the trial's result file.
    with one_line_errors(record_failure), interrupted_quietly():
        check_command(command)
        if command == "norms":
            from dyt_lab.norms.table import norms_table

            print(norms_table())
        elif command == "study":
            from dyt_lab.study.cli import main as study_main

            study_main(argv[1:])
        elif command == "probe":
            from dyt_lab.diagnostics.probe import main as probe_main

            probe_main(argv[1:])
        else:  # fit | validate | test | predict, and options before them (LightningCLI's own)
            from dyt_lab.runs import run_lightning

            run_lightning(argv)
