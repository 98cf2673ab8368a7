"""Build a run as ``dyt-lab fit`` builds it, without running it: what the up-front check and the fork server use.

``build`` makes the model, the data module and the Trainer (Lightning's own checks of its settings
included), or raises one ConfigError line; ``parse_once`` only parses, for a process in which no torch
operation may run (a fork server). Neither draws a seed nor writes a run folder.
"""

from __future__ import annotations

import io
import logging
import warnings
from argparse import ArgumentError
from contextlib import contextmanager, redirect_stderr, redirect_stdout

from dyt_lab.errors import ConfigError, cause_of_type
from dyt_lab.study.definition.study_file import one_line

# No seeding: building a run draws no seed, and seed_everything would set PL_GLOBAL_SEED in this
# process's environment, which worker and trial processes inherit (a trial with seed_everything: true
# would then take 0 instead of a fresh seed). Last, so it wins over the base configs' value.
NO_SEED = "--seed_everything=false"


@contextmanager
def quiet():
    """Hide Lightning's notes and warnings about each Trainer built here: once per value, they say nothing."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def build(args: list[str], what: str, parser=None):
    """What ``dyt-lab fit`` builds from ``args``: model, data and Trainer (with its checks); or one ConfigError.

    ``parser``: the parser of an earlier build, to parse with again.
    """
    from dyt_lab.runs import BuildCLI

    try:
        with quiet():
            # exit_on_error=False: the parser raises ArgumentError, which tells its refusals from the build's.
            # No load_from_checkpoint support: it dumps the whole config into the model, twice, and the
            # dump is a third of a build's time; nothing built here is saved.
            return BuildCLI([*args, NO_SEED], parser=parser, parser_kwargs={"exit_on_error": False},
                            load_from_checkpoint_support=False)
    except (ArgumentError, SystemExit) as err:  # SystemExit: a parser that insists on exiting
        raise ConfigError(f"{what} is refused by the dyt-lab fit parser: {one_line(err)}") from None
    except Exception as err:
        cause = cause_of_type(err, (ConfigError,))
        raise ConfigError(f"{what}: {cause if cause else one_line(err)}") from None


def parse_once(args: list[str]) -> None:
    """Parse ``args`` as ``dyt-lab fit`` parses them and build nothing; silent, whatever happens."""
    from dyt_lab.runs import BuildCLI

    class ParseOnly(BuildCLI):
        def instantiate_classes(self) -> None:  # a model or a Trainer would run torch operations
            pass

    with quiet(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        try:
            ParseOnly([*args, NO_SEED], parser_kwargs={"exit_on_error": False})
        except (Exception, SystemExit):  # whoever parses these next meets the same error and says it
            pass
