"""Faults during a run: Ctrl-C, a full disk, a write cut off (the previous checkpoint always survives), and
resuming or scoring the right run (``--ckpt_path last`` among runs of other models; eval/ folders)."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from dyt_lab.cli import main
from dyt_lab.errors import EXIT_CONFIG_ERROR, EXIT_INTERRUPTED
from dyt_lab.runs import run_lightning
from dyt_lab.training.checkpoints import AtomicCheckpointIO
from tests.helpers import fit_args, last_line, run_cli


def test_a_failed_checkpoint_write_keeps_the_previous_file_and_names_the_target(tmp_path, monkeypatch):
    io, target = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    before = target.read_bytes()

    real_open = open

    class FullDisk:  # takes 1000 bytes, then the disk is full
        def __init__(self, path, mode):
            self.file = real_open(path, mode)

        def write(self, data):
            self.file.write(bytes(data)[:1000])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr("dyt_lab.training.checkpoints.open", FullDisk, raising=False)
    with pytest.raises(OSError) as failure:
        io.save_checkpoint({"step": 2}, target)
    assert failure.value.errno == errno.ENOSPC and failure.value.filename == str(target)
    assert target.read_bytes() == before  # the previous last.ckpt, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no partial file left

    monkeypatch.undo()
    io.save_checkpoint({"step": 3}, target)
    assert torch.load(target, weights_only=True) == {"step": 3}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free."""
    with open(disk / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    size = (disk / "filler").stat().st_size
    os.truncate(disk / "filler", max(0, size - leave))


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_previous_last_ckpt_survives(tmpfs):
    small_disk = tmpfs("disk", "4m")  # a real 4 MB file system
    short = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--model.depth=1"]
    first = run_cli(fit_args(small_disk, "--trainer.max_epochs=1", *short), cwd=small_disk.parent)
    assert first.returncode == 0, first.stderr[-2000:]
    last = small_disk / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    before = _sha(last)
    _fill(small_disk, leave=last.stat().st_size // 3)  # room for logs and config.yaml, not for a checkpoint

    full = run_cli(fit_args(small_disk, "--trainer.max_epochs=2", "--ckpt_path=last", *short), cwd=small_disk.parent)
    lines = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == EXIT_CONFIG_ERROR, full.stderr[-2000:]
    assert "Traceback" not in full.stderr and len(lines) == 1, full.stderr[-2000:]
    assert lines[0].startswith("error: disk full: cannot write") and str(last.parent) in lines[0], lines
    assert _sha(last) == before  # the run can still be resumed from where it was
    assert not list(small_disk.rglob("*.partial"))


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# A shell without job control (a script's `cmd &`, `make test &`) starts its background jobs with SIGINT
# ignored, and Python then raises no KeyboardInterrupt: the fit trained on through Ctrl-C and the study's stop.
@pytest.mark.slow
@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_ctrl_c_during_fit_says_how_to_resume_and_exits_130(tmp_path, inherited):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLCONFIGDIR": str(tmp_path / ".mpl"), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "w") as stderr:  # a file: an unread pipe can fill up and stall the fit
        run = subprocess.Popen([sys.executable, "-m", "dyt_lab", *fit_args(tmp_path, "--trainer.max_epochs=200")],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                               preexec_fn=_ignore_sigint if inherited == "ignored" else None)
    last = tmp_path / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    try:
        deadline = time.monotonic() + 180
        while not last.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.exists(), "no epoch finished"
        run.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        run.wait(timeout=120)
    finally:  # a fit that ignored the signal must not train on after the test
        if run.poll() is None:
            run.kill()
            run.wait()
    err = (tmp_path / "stderr.txt").read_text()
    assert run.returncode == EXIT_INTERRUPTED, err[-2000:]
    assert "--ckpt_path last" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert "state_dict" in torch.load(last, weights_only=True)  # what the hint resumes from is whole


class InterruptFirstStep(Callback):
    """Ctrl-C at the first training step, before the run has written any checkpoint."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, capsys):
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores Ctrl-C while it shuts down
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(fit_args(tmp_path, "--trainer.callbacks+=tests.training.test_run_faults.InterruptFirstStep"))
    finally:
        signal.signal(signal.SIGINT, handler)
    line = last_line(capsys.readouterr().err)
    assert exit_info.value.code == EXIT_INTERRUPTED
    # --ckpt_path last would resume an older run's last.ckpt, or start over while saying it resumes
    assert "before its first checkpoint" in line and "--ckpt_path last" not in line, line


TINY = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--model.depth=1"]


def test_ckpt_path_last_resumes_the_newest_run_of_the_configs_model_and_a_pass_writes_under_eval(tmp_path, capsys):
    runs = tmp_path / "quickstart"
    mine = run_lightning(fit_args(tmp_path, *TINY))  # version_0: the config's model (DyT)
    run_lightning(fit_args(tmp_path, *TINY, "--model.norm=layernorm"))  # version_1: newer, another model
    capsys.readouterr()
    resumed = run_lightning(fit_args(tmp_path, *TINY, "--trainer.max_epochs=2", "--ckpt_path=last"))
    assert resumed.trainer.log_dir == mine.trainer.log_dir == str(runs / "version_0")
    assert resumed.trainer.current_epoch == 2
    said = capsys.readouterr().err
    assert f"resuming {runs / 'version_0'}" in said and "version_1: model.norm=dyt (checkpoint: layernorm)" in said
    # no run of this model: every candidate in one line, nothing written
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, *TINY, "--model.norm=rmsnorm", "--ckpt_path=last"))
    line = last_line(capsys.readouterr().err)
    assert exit_info.value.code == EXIT_CONFIG_ERROR and line.startswith("error: --ckpt_path 'last': no run under ")
    # resumed above, version_0 is now the newest: listed first, and its config is the one suggested
    assert "; version_0: model.norm=rmsnorm (checkpoint: dyt); version_1: model.norm=rmsnorm (checkpoint: layernorm);" \
        in line and f"--config {runs}/version_0/config.yaml --ckpt_path last" in line
    # test and validate of a run's checkpoint: under that run's eval/, not a new training version_N
    ckpt = runs / "version_0" / "checkpoints" / "last.ckpt"
    for subcommand in ("test", "validate"):
        run_lightning([subcommand, f"--ckpt_path={ckpt}", "--trainer.enable_progress_bar=false"])
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    evaluated = runs / "version_0" / "eval"
    assert (evaluated / "test_last" / "version_0" / "test_predictions.npz").is_file()
    assert (evaluated / "validate_last" / "version_0" / "config.yaml").is_file()
