"""A nested config as dotted keys, by one rule: the one flattener of runs, studies and checkpoints.

jsonargparse nests a class's arguments under ``init_args`` (``dict_kwargs`` for ``**kwargs``) and names
the class in ``class_path``. The short key leaves those levels out, as the HParams tab and a study's
search space write it: ``model.optimizer.init_args.lr`` -> ``model.optimizer.lr``; the class becomes the
value of its own key (``model.optimizer: torch.optim.AdamW``). Keys that begin with ``_`` are a
library's bookkeeping (Lightning's hyperparameters carry how it rebuilds a module) and are left out, so
nothing here depends on what such a key is called.
"""

from __future__ import annotations

from typing import Any

NESTING = ("init_args", "dict_kwargs")  # jsonargparse's levels that the short key leaves out


def short_key(key: str) -> str:
    """``model.optimizer.init_args.lr`` -> ``model.optimizer.lr``."""
    return ".".join(part for part in key.split(".") if part not in NESTING)


def flatten(config: dict[str, Any], prefix: str = "", *, whole_classes: bool = False) -> dict[str, Any]:
    """Nested config -> ``{short dotted key: leaf value}``, in the config's order.

    ``whole_classes``: a mapping with a ``class_path`` stays one value (what a ``--key`` flag can set
    at once) instead of its class and each argument as keys of their own.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key in NESTING and isinstance(value, dict):
            flat.update(flatten(value, prefix, whole_classes=whole_classes))
        elif key == "class_path":
            flat[prefix.removesuffix(".") or key] = value
        elif isinstance(value, dict) and value and not (whole_classes and "class_path" in value):
            flat.update(flatten(value, f"{prefix}{key}.", whole_classes=whole_classes))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def known_keys(config: dict[str, Any]) -> set[str]:
    """Every short key a config can be set at: each flattened key and each of its parents (``model.norm``)."""
    keys = set()
    for key in flatten(config):
        parts = key.split(".")
        keys.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return keys
