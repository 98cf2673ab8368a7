"""Run folders' checkpoints: the one to resume, one that fits the model, and the config saved beside it."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dyt_lab.errors import ConfigError


def find_last_checkpoint(save_dir: str, name: str) -> tuple[Path, int] | None:
    """The newest ``<save_dir>/<name>/version_N/checkpoints/last.ckpt`` and its N, or None."""
    found = []
    for ckpt in Path(save_dir, name).glob("version_*/checkpoints/last.ckpt"):
        match = re.fullmatch(r"version_(\d+)", ckpt.parent.parent.name)
        if match:
            found.append((ckpt.stat().st_mtime, int(match.group(1)), ckpt))
    if not found:
        return None
    _, version, ckpt = max(found)
    return ckpt, version


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
    mine_class, theirs_class = model_config.get("class_path"), saved.pop("_class_path", None)
    if mine_class and theirs_class and mine_class != theirs_class:
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
