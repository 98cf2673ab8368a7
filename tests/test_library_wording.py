"""The library messages dyt_lab reads as text still say what it reads.

``dyt_lab/parse_errors.py`` turns jsonargparse's refusals into one line by their wording, and
``dyt_lab/errors.py`` knows a full or read-only SQLite storage only by SQLite's words. A release
that rewords one would not fail loudly there: the one-line errors would just get worse. Here each
library gets real bad input, and each fragment the code relies on must be in what it says; a
failure names the fragment, the installed version, and the whole message.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from typing import Literal

import jsonargparse
import optuna
import pytest
import sqlalchemy

from dyt_lab import parse_errors
from dyt_lab.errors import SQLITE_FAULTS, write_fault


class Net:
    """A model class, as ``--model`` / ``--model.net`` name one."""

    def __init__(self, width: int = 2, act: Literal["relu", "gelu"] = "relu") -> None:
        pass


class Other:
    """A class that is not a Net."""

    def __init__(self, x: int = 1) -> None:
        pass


class Optimizer:
    """An optimizer class, as ``--model.optimizer`` takes one (its first argument given later)."""

    def __init__(self, params: list, lr: float = 0.1) -> None:
        pass


HERE = __name__  # class paths of the classes above, as a user types them


def parser() -> jsonargparse.ArgumentParser:
    """LightningCLI's shape in small: a ``fit`` subcommand with a config file, a model class, unions and callables."""
    fit = jsonargparse.ArgumentParser(exit_on_error=False)
    fit.add_argument("--config", action=jsonargparse.ActionConfigFile)
    fit.add_argument("--model", type=Net, sub_configs=True)
    fit.add_argument("--lr", type=float, default=0.1)
    fit.add_argument("--norm", type=Literal["dyt", "layernorm"], default="dyt")
    fit.add_argument("--depth", type=int | None, default=None)
    fit.add_argument("--net", type=Net | None, default=None)
    fit.add_argument("--optimizer", type=Callable[[list], Optimizer] | None, default=None)
    fit.add_argument("--trainer.max_epochs", type=int, default=1)
    top = jsonargparse.ArgumentParser(exit_on_error=False, prog="dyt-lab")
    top.add_subcommands().add_subcommand("fit", fit)
    return top


def refusal(args: list[str]) -> str:
    """What jsonargparse says when it refuses ``args``."""
    with pytest.raises(jsonargparse.ArgumentError) as refused:
        parser().parse_args(["fit", *args])
    return str(refused.value)


def lines(message: str) -> list[str]:
    """The message's lines as parse_errors.condensed reads them: stripped, without a list's dash."""
    return [line.strip().lstrip("- ").strip() for line in message.splitlines() if line.strip()]


# What parse_errors.py reads (its pattern, or a line it skips by its start), and input that makes jsonargparse say it.
FRAGMENTS = {
    "KEY": (parse_errors.KEY, ["--lr", "fast"]),
    "EXPECTED": (parse_errors.EXPECTED, ["--lr", "fast"]),
    "Got value": (re.compile(r"\. Got value: fast$", re.M), ["--lr", "fast"]),
    "EXPECTED of a Literal": (parse_errors.EXPECTED, ["--norm", "dtt"]),
    "NESTED": (parse_errors.NESTED, ["--net", f"{HERE}.Net", "--net.width", "wide"]),
    "CLASS_PATH": (parse_errors.CLASS_PATH, ["--net", f"{HERE}.Nett"]),
    "UNKNOWN_OPTION": (parse_errors.UNKNOWN_OPTION, ["--net", f"{HERE}.Net", "--net.widht", "3"]),
    "UNKNOWN_KEY": (parse_errors.UNKNOWN_KEY, ["--config", "CONFIG"]),
    "UNKNOWN_FLAG": (parse_errors.UNKNOWN_FLAG, ["--lrr", "3"]),
    "Given value": (re.compile(r"^\s*Given value: deep$", re.M), ["--depth", "deep"]),
    "callable class": (re.compile(r"^Type .* expects a function or a callable class: ", re.M),
                       ["--optimizer", f"{HERE}.Optimizer", "--optimizer.lr", "x"]),
    # dyt_lab/runs.py: an injected class that is no subclass of the type asked for (timm's ResNet block)
    "does not correspond to a subclass": (re.compile("does not correspond to a subclass"),
                                          ["--net", f"{HERE}.Other"]),
}
# Lines condensed() skips as structure: reworded, each would show up as the reason itself.
STRUCTURE = {
    "Does not validate against any of the Union subtypes": ["--depth", "deep"],
    "Subtypes:": ["--depth", "deep"],
    "Errors:": ["--depth", "deep"],
    "Given value type:": ["--depth", "deep"],
    "Given value:": ["--depth", "deep"],
    "Problem with given class_path": ["--net", f"{HERE}.Nett"],
    "Expected a path but": ["--model", "nosuch"],
    "Expected a dot import path": ["--model", "nosuch"],
}


@pytest.mark.parametrize("name", FRAGMENTS)
def test_jsonargparse_still_says_what_parse_errors_reads(name, tmp_path):
    pattern, args = FRAGMENTS[name]
    config = tmp_path / "fit.yaml"
    config.write_text("trainer:\n  max_epoch: 3\n")  # a misspelt key in a config file
    message = refusal([str(config) if arg == "CONFIG" else arg for arg in args])
    found = pattern.search(message) or any(pattern.search(line) for line in lines(message))
    assert found, (f"jsonargparse {jsonargparse.__version__} no longer says {pattern.pattern!r} ({name}), which "
                   f"dyt_lab/parse_errors.py relies on; it said, for {args}:\n{message}")


@pytest.mark.parametrize("start", STRUCTURE)
def test_jsonargparse_still_starts_the_structure_lines_parse_errors_skips(start):
    args = STRUCTURE[start]
    message = refusal(args)
    assert start in parse_errors.STRUCTURE
    assert any(line.startswith(start) for line in lines(message)), (
        f"jsonargparse {jsonargparse.__version__} no longer starts a line with {start!r}, which "
        f"dyt_lab/parse_errors.py skips as structure; it said, for {args}:\n{message}")


def test_the_condensed_lines_read_every_part_of_a_real_refusal():
    """The fragments together: the flag, the value given and the valid choices all come out."""
    assert parse_errors.condensed(refusal(["--norm", "dtt"])) == \
        "--norm 'dtt': expected one of 'dyt', 'layernorm'"
    assert parse_errors.condensed(refusal(["--net", f"{HERE}.Net", "--net.width", "wide"])) == \
        "--net.width 'wide': expected an int"


def sqlite_error(err: BaseException) -> BaseException:
    """The SQLite error (sqlite3's, as SQLAlchemy raised it) in ``err``'s chain."""
    while err is not None and type(err).__module__.split(".")[0] not in ("sqlite3", "sqlalchemy"):
        err = err.__cause__ or err.__context__
    assert err is not None, "no SQLite error in the chain"
    return err


def versions() -> str:
    return f"SQLite {sqlite3.sqlite_version}, SQLAlchemy {sqlalchemy.__version__}, Optuna {optuna.__version__}"


@pytest.mark.parametrize("words", SQLITE_FAULTS)
def test_sqlite_still_says_what_errors_py_reads_as_a_full_or_read_only_storage(tmp_path, words):
    """A real SQLite storage through Optuna: a database at its page limit, and one opened read-only."""
    path = tmp_path / "study.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{path}")

    def at_its_limit():
        connection = sqlite3.connect(path)
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")  # as full as a full disk, to SQLite
        return connection

    url, engine = {"database or disk is full": (f"sqlite:///{path}", {"creator": at_its_limit}),
                   "readonly database": (f"sqlite:///file:{path}?mode=ro&uri=true", None)}[words]
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, skip_compatibility_check=True)
    with pytest.raises(Exception) as refused:
        optuna.load_study(study_name="s", storage=storage).set_user_attr("x", "a" * 100_000)
    said = str(sqlite_error(refused.value))
    assert words in said, (f"{versions()}: a {words.split()[-1]} storage no longer says {words!r}, which "
                           f"dyt_lab/errors.py (SQLITE_FAULTS) reads; it said:\n{said}")
    assert write_fault(refused.value).errno == SQLITE_FAULTS[words]


def test_lightnings_litlogger_tip_is_filtered_where_it_is_logged(caplog):
    """Lightning logs its litlogger tip for every Trainer; runs.py filters it on the logger it uses.
    If Lightning moves or rewords it, the tip reaches the log again and this test names it."""
    import logging

    from lightning.pytorch import Trainer

    import dyt_lab.runs  # noqa: F401  (installs the filter)

    with caplog.at_level(logging.INFO):
        Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert caplog.records, "Lightning logged nothing about the new Trainer: the test sees no log at all"
    assert not [r.getMessage() for r in caplog.records if "litlogger" in r.getMessage().lower()]


def test_lightnings_seed_line_is_quiet_where_it_is_logged(caplog):
    """Lightning logs "Seed set to N" on the logger runs.py sets to WARNING; its warnings still show.
    If Lightning moves the line to another logger, it precedes every config error again and this test says so."""
    import logging

    from lightning.pytorch import seed_everything

    import dyt_lab.runs  # noqa: F401  (sets the level)

    with caplog.at_level(logging.INFO):  # on the root logger: the seed logger's own level still decides
        seed_everything(3, verbose=True)
    assert not [r.getMessage() for r in caplog.records if "Seed set to" in r.getMessage()]
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.NOTSET)
    try:
        with caplog.at_level(logging.INFO):
            seed_everything(3, verbose=True)
        assert any("Seed set to 3" in r.getMessage() for r in caplog.records), \
            "Lightning no longer logs its seed line on lightning.fabric.utilities.seed: runs.py quiets nothing"
    finally:
        logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
