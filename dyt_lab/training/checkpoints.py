"""Run folders' checkpoints: the one to resume, one that fits the model, and the config saved beside it."""

from __future__ import annotations

import io
import json
import os
import re
import sys
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dyt_lab.errors import ConfigError


def last_checkpoints(save_dir: str, name: str) -> list[tuple[Path, int]]:
    """Every ``<save_dir>/<name>/version_N/checkpoints/last.ckpt`` and its N, newest first."""
    found = []
    for ckpt in Path(save_dir, name).glob("version_*/checkpoints/last.ckpt"):
        match = re.fullmatch(r"version_(\d+)", ckpt.parent.parent.name)
        if match:
            found.append((ckpt.stat().st_mtime, int(match.group(1)), ckpt))
    return [(ckpt, version) for _, version, ckpt in sorted(found, reverse=True)]


def read_hyperparameters(path: str | Path) -> dict:
    """A checkpoint's saved model arguments, without reading its weights into memory (mmap), or a ConfigError."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # corrupt, truncated or foreign: one line, as read_checkpoint says it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read checkpoint '{path}' (truncated or not a checkpoint?): {first}") from None
    return {"hyper_parameters": ckpt.get("hyper_parameters") or {}} if isinstance(ckpt, dict) else {}


def find_last_checkpoint(save_dir: str, name: str, model_config: dict | None = None) -> tuple[Path, int] | None:
    """The newest ``last.ckpt`` under ``<save_dir>/<name>`` trained as ``model_config``'s model, and its run's N.

    None if the folder holds no ``last.ckpt`` at all. Runs of another model (another class, norm, lr: what
    ``conflicting_hyperparameters`` compares) are passed over, and said so on stderr when a newer one was;
    if every run is of another model, a ConfigError lists them with how to continue one. Without
    ``model_config`` the newest run is taken, whatever its model.
    """
    runs = last_checkpoints(save_dir, name)
    if model_config is None or not runs:
        return runs[0] if runs else None
    others = []  # (version, how its model differs from the config's)
    for ckpt, version in runs:
        try:
            conflicts = conflicting_hyperparameters(model_config, read_hyperparameters(ckpt))
        except ConfigError as err:
            conflicts = [str(err)]
        if not conflicts:
            if others:
                print(f"--ckpt_path last: resuming {ckpt.parent.parent}, the newest run of this config's model "
                      f"(passed over: {_listed(others)})", file=sys.stderr)
            return ckpt, version
        others.append((version, conflicts))
    folder = Path(save_dir, name)
    raise ConfigError(f"--ckpt_path 'last': no run under {folder} was trained as this config's model; "
                      f"{_listed(others)}; continue one with its own config (dyt-lab fit --config "
                      f"{folder}/version_{others[0][0]}/config.yaml --ckpt_path last), or leave out --ckpt_path "
                      "to start a new run")


def _listed(others: list[tuple[int, list[str]]], most: int = 3) -> str:
    """``version_2: model.norm=dyt (checkpoint: layernorm); version_1: ...``, ``most`` runs and differences each."""
    def conflicts(found: list[str]) -> str:
        return ", ".join(found[:most]) + (f" (and {len(found) - most} more)" if len(found) > most else "")
    listed = "; ".join(f"version_{version}: {conflicts(found)}" for version, found in others[:most])
    return listed + (f"; and {len(others) - most} more runs" if len(others) > most else "")


def evaluation_folder(subcommand: str, ckpt_path: str | None, save_dir: str, name: str) -> tuple[str, str]:
    """The logger's ``(save_dir, name)`` for a validate / test / predict pass: an ``eval/`` folder, not a run's.

    A checkpoint in a run folder (``<run>/checkpoints/best.ckpt``) is scored into
    ``<run>/eval/test_best/version_K``, beside the run it scores; any other pass into
    ``<save_dir>/<name>/eval/<subcommand>[_<checkpoint>]/version_K``. Either way no ``version_N`` of
    training runs is taken, and ``--ckpt_path last`` (which reads ``version_N/checkpoints``) never
    mistakes a pass for a run.
    """
    ckpt = Path(ckpt_path) if ckpt_path and Path(ckpt_path).is_file() else None
    in_run = ckpt is not None and ckpt.parent.name == "checkpoints"
    base = ckpt.parent.parent if in_run else Path(save_dir, name)
    return str(base / "eval"), subcommand if ckpt is None else f"{subcommand}_{ckpt.stem}"


def run_config_of(ckpt: str | Path, instead: str) -> Path:
    """The ``config.yaml`` a run saved two folders above its checkpoint, or a ConfigError naming ``instead``."""
    # <run folder>/checkpoints/<name>.ckpt beside <run folder>/config.yaml: Lightning's own layout
    config = Path(ckpt).parent.parent / "config.yaml"
    if not Path(ckpt).exists():
        raise ConfigError(f"checkpoint '{ckpt}' does not exist")
    if not config.is_file():
        raise ConfigError(f"no config.yaml next to checkpoint '{ckpt}' (looked for {config}); pass {instead}")
    return config


def read_checkpoint(path: str | Path) -> dict:
    """Read a Lightning checkpoint (tensors and plain values only), or raise one ConfigError line saying why not."""
    if not Path(path).is_file():
        raise ConfigError(f"checkpoint '{path}' does not exist" if not Path(path).exists()
                          else f"checkpoint '{path}' is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt, truncated or foreign file (pickle, zip or torch errors): say so in one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read checkpoint '{path}' (truncated or not a checkpoint?): {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("state_dict") is None:
        raise ConfigError(f"'{path}' is not a Lightning checkpoint (it has no state_dict)")
    return ckpt


def check_fits(model: torch.nn.Module, ckpt: dict, path: str | Path) -> None:
    """Raise one ConfigError line if checkpoint ``ckpt`` (read from ``path``) holds weights of another model."""
    state, own = ckpt["state_dict"], model.state_dict()
    problems = [f"missing key '{k}'" for k in own if k not in state]
    problems += [f"unexpected key '{k}'" for k in state if k not in own]
    problems += [f"'{k}' has shape {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
                 for k, v in own.items() if k in state and state[k].shape != v.shape]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"checkpoint '{path}' does not match the config's model: {problems[0]}{more}; "
                          "pass the run's own --config")


def read_matching_checkpoint(model: torch.nn.Module, path: str | Path) -> dict:
    """Read a Lightning checkpoint whose weights fit ``model``, or raise one ConfigError line saying why not."""
    ckpt = read_checkpoint(path)
    check_fits(model, ckpt, path)
    return ckpt


LINKED = ("num_classes", "in_channels", "image_size")  # set from the data module, not by users
MODEL_CLASS = "dyt_lab_model_class"  # checkpoint key: the class name of the LightningModule that saved it


def _resolved(args: dict) -> dict:
    """A ResNet's arguments with their recipe written in (a checkpoint saved before recipes were resolved
    holds the defaults the recipe replaced); any other model's as they are."""
    from dyt_lab.models.resnet import resolve_recipe

    return resolve_recipe(args) if "recipe" in args else args


def conflicting_hyperparameters(model_config: dict, ckpt: dict) -> list[str]:
    """The model arguments a run's config sets otherwise than the checkpoint it starts from.

    ``model_config`` is the config's ``model`` section (``class_path`` and ``init_args``); the
    checkpoint holds the same as Lightning's ``hyper_parameters``. Each entry reads
    ``model.norm=layernorm (checkpoint: dyt)``. An optimizer or scheduler is compared argument by
    argument, a recipe by the options it sets. ``ckpt`` is the checkpoint as ``read_checkpoint``
    (or ``read_hyperparameters``) returns it.
    """
    from dyt_lab.training.records import flat_hparams

    saved = dict(ckpt.get("hyper_parameters") or {})
    mine_class, theirs_class = model_config.get("class_path"), ckpt.get(MODEL_CLASS)  # none in an old checkpoint
    if mine_class and theirs_class and mine_class.rpartition(".")[2] != theirs_class:
        return [f"model={mine_class} (checkpoint: {theirs_class})"]
    plain = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731  tuples and lists alike
    mine, saved = _resolved(dict(model_config.get("init_args") or {})), _resolved(saved)
    conflicts = []
    for key in sorted((mine.keys() & saved.keys()) - set(LINKED)):
        a, b = plain(mine[key]), plain(saved[key])
        if isinstance(a, dict) and isinstance(b, dict) and "class_path" in a and "class_path" in b:
            fa, fb = flat_hparams({key: a}), flat_hparams({key: b})  # optimizer: class and each argument
            conflicts += [f"model.{k}={fa[k]} (checkpoint: {fb[k]})" for k in sorted(fa.keys() & fb.keys())
                          if fa[k] != fb[k]]
        elif a != b:
            conflicts.append(f"model.{key}={a} (checkpoint: {b})")
    return conflicts


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing beside the target and renaming it in place: the old file survives a failure.

    Lightning commits a save through fsspec, whose temporary file lies in the system's temp folder,
    so the commit is a copy into the target: a full disk truncates the previous ``last.ckpt``. Here
    the bytes go to a hidden file in the checkpoint's own folder and ``os.replace`` swaps it in.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path) or storage_options is not None:  # remote storage: fsspec's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")  # not *.ckpt: no checkpoint glob ever sees it
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            serialized = io.BytesIO()  # in memory first, as Lightning does: a failed write is then a plain OSError
            torch.save(checkpoint, serialized)
            with open(partial, "wb") as file:
                file.write(serialized.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException as err:
            partial.unlink(missing_ok=True)
            if isinstance(err, OSError) and not err.filename:  # a failed write() names no file: name it
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
