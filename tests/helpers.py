"""Plain helpers shared by tests in more than one folder: paths, running dyt-lab, one-line errors, model builders.

The convention (tests/conftest.py says it too): what a test calls with its own arguments is a plain function
here, imported by name, so a reader can jump to it and a ``parametrize`` list or a module-scoped fixture can
call it; what needs pytest's per-test machinery (tmp folders, monkeypatch, teardown) is a fixture in a
``conftest.py``. Helpers that only one package's tests share live beside them (``tests/study/helpers.py``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
RESNET_DIGITS = ROOT / "configs" / "experiments" / "resnet_bn_vs_dyt_digits.yaml"
# Fast, quiet runs: tests read metrics from the trainer and the event files, not from the terminal.
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def fit_args(save_dir: Path, *extra: str, config: Path = QUICKSTART) -> list[str]:
    """LightningCLI args for a quiet fit of ``config`` logging under ``save_dir``."""
    return ["fit", "--config", str(config), f"--trainer.logger.init_args.save_dir={save_dir}", *QUIET, *extra]


def run_cli(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``python -m dyt_lab ARGS`` as a new process, the way a user's shell would."""
    # One thread: xdist runs two workers on two cores, and a child with torch's default of every core
    # beside another busy process falls off the 7x oversubscription cliff (README, Performance).
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLCONFIGDIR": str(cwd / ".mpl"), "OMP_NUM_THREADS": "1"}
    env.pop("DYT_LAB_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dyt_lab", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> str | None:
    """Mount a real tmpfs of ``size`` at ``folder`` (root only); None, or why it cannot be mounted."""
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    return None if done.returncode == 0 else \
        f"cannot mount a tmpfs here ({(done.stderr or done.stdout).strip() or done.returncode})"


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def last_line(text: str) -> str:
    """The last non-empty line of a process's output."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def cli_refusal(capsys, args: list[str]) -> tuple[str, str, str]:
    """Run ``dyt-lab ARGS`` in this process; it must exit with code 2 and no traceback. Its last stderr line,
    its stderr and its stdout."""
    from dyt_lab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err, err
    return last_line(err), err, out


def one_line_error(call, *args, **kwargs) -> str:
    """``call(*args, **kwargs)`` must raise a ConfigError whose message is one line; that message."""
    from dyt_lab.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def digits_resnet(preset: str = "resnet_tiny", seed: int | None = None, **kwargs):
    """A ResNet for digits-shaped data (1 channel, 10 classes), built after ``torch.manual_seed(seed)`` if given."""
    import torch

    from dyt_lab.models import ResNet

    if seed is not None:
        torch.manual_seed(seed)
    return ResNet(preset, num_classes=10, in_channels=1, **kwargs)


def digits_vit(seed: int | None = None, **kwargs):
    """The digits ViT (``vit_digits``: 1 channel, 10 classes), built after ``torch.manual_seed(seed)`` if given."""
    import torch

    from dyt_lab.models import ViT

    if seed is not None:
        torch.manual_seed(seed)
    return ViT("vit_digits", num_classes=10, in_channels=1, **kwargs)


def shared_folder(tmp_path_factory, name: str, build) -> Path:
    """A folder built once per test session by ``build(folder)``, even when xdist spreads the tests that read
    it over its workers (a shared base folder and a file lock, as xdist's documentation does for session
    fixtures). ``build`` runs once; a ``.built`` marker tells the other workers it finished."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()  # under xdist, its parent is this session's, shared by workers
    folder = (shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared) / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            folder.mkdir(exist_ok=True)
            build(folder)
            (folder / ".built").touch()
    return folder


def served(logdir):
    """What TensorBoard's hparams backend serves for ``logdir``: the experiment and the session groups."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(data_provider=provider, logdir=str(logdir)))
    request = context.RequestContext()
    experiment = get_experiment.Handler(request, backend, "", api_pb2.GetExperimentRequest(hparams_limit=1000)).run()
    query = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=list(range(4)))
    groups = list_session_groups.Handler(request, backend, "", query).run().session_groups
    return experiment, groups


def ticked(experiment) -> list[str]:
    """The columns the HParams tab ticks: the first five, differing ones first (its stable sort)."""
    infos = sorted(experiment.hparam_infos, key=lambda info: not info.differs)
    return [info.name for info in infos[:5]]
