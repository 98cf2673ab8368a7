"""The ``dyt-lab`` command: LightningCLI's fit/validate/test/predict, plus study, probe and norms.

Each command imports its own module only when it runs, so ``dyt-lab norms`` or ``dyt-lab study
--help`` do not pay Lightning's seconds of import time.
"""

from __future__ import annotations

import sys

from dyt_lab.errors import interrupted_quietly, one_line_errors
from dyt_lab.study.trial.protocol import record_failure


def main(args: list[str] | None = None) -> None:
    """Entry point of ``dyt-lab`` and ``python -m dyt_lab``."""
    argv = list(sys.argv[1:] if args is None else args)
    command = argv[0] if argv else None
    # A user mistake or a diverged run is an expected outcome: one line and a non-zero exit code.
    # In a study trial's fit, record_failure also leaves why it failed in the trial's result file.
    with one_line_errors(record_failure), interrupted_quietly():
        if command == "norms":
            from dyt_lab.norms.table import norms_table

            print(norms_table())
        elif command == "study":
            from dyt_lab.study.cli import main as study_main

            study_main(argv[1:])
        elif command == "probe":
            from dyt_lab.diagnostics.probe import main as probe_main

            probe_main(argv[1:])
        else:  # fit | validate | test | predict, and LightningCLI's own --help
            from dyt_lab.runs import run_lightning

            run_lightning(argv)
