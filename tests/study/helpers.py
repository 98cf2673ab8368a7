"""Plain helpers shared by the study's tests: the tiny study file, loading it back, a trial process that has
already ended, and the one-line refusals (fixtures that use them: tests/study/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from dyt_lab import errors
from dyt_lab.cli import main
from dyt_lab.study.definition.storage import open_storage, retry_history
from dyt_lab.study.trial.protocol import RESULT_FILE, TRIAL_ENV, record_failure
from tests.helpers import RESNET_DIGITS, cli_refusal

BASE = str(RESNET_DIGITS)
# Trials of a few seconds each: most of a trial's time is starting Python and Lightning.
TINY = {"trainer.max_epochs": 2, "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
        "trainer.enable_model_summary": False}


def write_study(folder: Path, name: str, root: Path | None = None, **keys) -> Path:
    """A study file over the tiny ResNet (a grid over two norms, 2 trials, SQLite), its study folder under
    ``folder/studies`` unless ``root`` is given; ``keys`` replace or add top-level keys."""
    spec = {"study_name": name, "root": str(root or folder / "studies"), "base": {"configs": [BASE], "overrides": TINY},
            "search_space": {"model.norm": ["dyt", "derf"]}, "sampler": {"name": "grid"},
            "pruner": {"name": "none"}, "n_trials": 2, **keys}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# What the fault tests' studies change: a journal, one random trial, started as a fresh process.
JOURNAL_STUDY = {"storage": "journal", "sampler": {"name": "random", "seed": 0}, "n_trials": 1, "isolation": "process"}


def write_journal_study(folder: Path, name: str, root: Path | None = None, **keys) -> Path:
    """A journal study file over the tiny ResNet, one trial, started as a fresh process."""
    return write_study(folder, name, root, **{**JOURNAL_STUDY, **keys})


def load(folder: Path, name: str, file: str = "study.db") -> optuna.Study:
    """Study ``name`` under ``folder/studies``, from its SQLite database or (``file`` not a .db) its journal."""
    storage = f"sqlite:///{folder / 'studies' / name / file}" if file.endswith(".db") else \
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "studies" / name / file)))
    return optuna.load_study(study_name=name, storage=storage)


def counted(study: optuna.Study) -> list:
    """The study's trials, less those a retry has replaced."""
    retried = {n for t in study.trials for n in retry_history(t)}
    return [t for t in study.trials if t.number not in retried]


BN_POINT = {"name": "factored", "center": "batch", "scale": "batch_std", "squash": "none"}
ALPHA_POINT = {"name": "factored", "center": "batch", "scale": "alpha", "squash": "none"}  # BN with DyT's scale


class EndedTrial:
    """A trial process that ends as soon as it is waited for, after ``at_end`` ran (another worker acting
    mid-trial): it leaves the value 0.5 in its result file; or it fails with ``raises`` as a fit process
    ends (the real ``one_line_errors`` with ``record_failure``, in the trial's environment); or it exits
    with ``code`` having written nothing (``result``, if given, is what it wrote)."""

    def __init__(self, run_dir: Path, env: dict, code: int = 0, raises: BaseException | None = None,
                 result: dict | None = None, at_end=None) -> None:
        self.run_dir, self.env, self.code, self.raises, self.result = run_dir, env, code, raises, result
        self.at_end = at_end
        self.pid = os.getpid()

    def wait(self, timeout=None) -> int:
        if self.at_end is not None:
            self.at_end()
        (self.run_dir / "stderr.log").write_text("")
        if self.code == 0 and self.raises is None:
            self.result = {"history": {"0": 0.5}, "epochs": 1, "metrics": {}, "pruned": False, "error": None}
        if self.result is not None:
            (self.run_dir / RESULT_FILE).write_text(json.dumps(self.result))
        return self.code if self.raises is None else self._fail()

    def _fail(self) -> int:
        """The fit process's own ending with ``raises``; its exit code."""
        before = os.environ.get(TRIAL_ENV)
        os.environ[TRIAL_ENV] = self.env[TRIAL_ENV]
        try:
            with errors.one_line_errors(record_failure), errors.interrupted_quietly():
                raise self.raises
        except SystemExit as stop:
            return stop.code
        except BaseException:
            return 1  # Python's exit code for an exception nobody catches (a bug's traceback)
        finally:
            os.environ.pop(TRIAL_ENV)
            if before is not None:
                os.environ[TRIAL_ENV] = before

    def send_signal(self, signum) -> None:
        pass

    def kill(self) -> None:
        pass


def other_worker(journal: str, name: str) -> optuna.Study:
    """The study as another worker process sees it: its own storage object on the same journal file."""
    return optuna.load_study(study_name=name, storage=open_storage(journal))


def dead_pid() -> int:
    """The process id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def trials_of(journal: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The journal study's trials, as another worker reads them."""
    return other_worker(journal, name).trials


def run_failed(capsys, args: list[str]) -> tuple[str, str]:
    """Run ``dyt-lab ARGS`` in-process; it must exit 2 with one ``error:`` line; that line and its stdout."""
    line, err, out = cli_refusal(capsys, args)
    assert [said for said in err.splitlines() if said.startswith("error:")] == [line], err
    return line, out


def one_error_line(capsys, args: list[str]) -> str:
    """Run ``dyt-lab ARGS`` in-process; it must exit 2 with one ``error:`` line and no traceback; that line."""
    return run_failed(capsys, args)[0]


def run_ok(capsys, args: list[str]) -> str:
    """Run ``dyt-lab ARGS`` in-process; it must end without an error; its stdout."""
    main(args)
    captured = capsys.readouterr()
    assert "error:" not in captured.err, captured.err
    return captured.out


FAILED = {"code": 1}  # a run that failed and said nothing: "exit code 1: no output"
