"""Named recipes: bundles of ResNet options (norm, alpha rule and alpha0, the batch-free blocks) behind one flag.

A recipe fills each option it names that is left at its default or null; an option set to
anything else wins (``--model.recipe bn_free --model.norm derf`` keeps Derf). The result is what
a run records: ``resolve`` writes the recipe's values into the arguments before anything is
built or saved, so ``config.yaml``, the checkpoint's hyperparameters and TensorBoard's HParams
tab show the norm, alpha rule and alpha0 the run used, never the defaults the recipe replaced.
Resolving twice gives the same arguments, so a resolved config or checkpoint rebuilds the same model.

When an option set over a recipe makes the model impossible to build (a config's BatchNorm-like
``norm`` under ``bn_free``'s ``alpha_rule: data``), ``blocked`` names that option and how to clear it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from dyt_lab.errors import ConfigError

# name -> the ResNet options it sets (``agc``: the lambda of the adaptive gradient clipping that
# ResNetClassifier adds as a callback). The search chooses the final batch-free design; this is
# where it is written down.
RECIPES: dict[str, dict[str, Any]] = {
    # the design configs/study/bn_free_search.yaml chose (docs/findings.md, "An alternative to BatchNorm"):
    # scaled weight standardisation, and at every norm site a tanh of the input minus each sample's
    # per-channel mean (batch-free, not point-wise), with one learnable alpha set from the first batch
    # (alpha_init: the std the tanh's argument starts with, small so tanh starts nearly linear) and a
    # learnable scalar shift; no branch gain, NF scaling or AGC.
    "bn_free": {"weight_standardization": True, "alpha_rule": "data", "alpha_init": 0.16,
                "norm": {"name": "dyt_general", "squash": "tanh", "alpha": "scalar", "shift": "scalar",
                         "center": "sample"}},
    # NF-ResNets' own recipe in this ResNet: no norm at all, signal propagation by weight standardisation
    # and alpha/beta scaling, skip gain 0 and AGC (without NF's activation gains: this ResNet has none)
    "nf_resnet": {"weight_standardization": True, "nf_alpha": 0.2, "branch_gain": 0.0, "norm": "identity",
                  "agc": 0.01},
}
# The learning rate a recipe was found at (its setting: docs/findings.md): shown in the site table, never
# applied. The optimizer is the config's own, and a recipe that changed it silently would make a run other
# than the one its config says.
RECIPE_LR: dict[str, float] = {"bn_free": 0.0105}


def recipe_options(recipe: str | None) -> dict[str, Any]:
    """The options of a named recipe ({} for None), or a one-line ConfigError naming the recipes."""
    if recipe is None:
        return {}
    if recipe not in RECIPES:
        close = difflib.get_close_matches(str(recipe), RECIPES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"--model.recipe {recipe!r}: unknown recipe{hint}; valid recipes: {', '.join(RECIPES)}")
    return dict(RECIPES[recipe])


def _unset(value: Any, default: Any) -> bool:
    return value is None or value == default


def resolve(args: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` (a model's arguments, ``recipe`` among them) with the recipe's options written in.

    Each option the recipe names takes the recipe's value where ``args`` holds null or its default;
    then every option of ``defaults`` still null takes its default (``norm: null`` is BatchNorm
    without a recipe). Keys besides those are returned as they are.
    """
    resolved = dict(args)
    for key, value in recipe_options(args.get("recipe")).items():
        if _unset(resolved.get(key), defaults[key]):
            resolved[key] = value
    return {key: defaults[key] if key in defaults and value is None else value for key, value in resolved.items()}


def overridden(args: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The options ``args`` sets over its recipe: option -> the recipe's value that does not apply."""
    return {key: value for key, value in recipe_options(args.get("recipe")).items()
            if not _unset(args.get(key), defaults[key]) and args[key] != value}


def flow(value: Any) -> str:
    """A value as YAML's flow style writes it on one line: ``{name: factored, center: batch}``, ``0.5``."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def blocked(args: Mapping[str, Any], defaults: Mapping[str, Any], err: ConfigError,
            build: Callable[..., object]) -> ConfigError:
    """``err`` (raised building ``args``) as the option set over the recipe that blocks it, if one does.

    ``build(**args)`` builds the model again. Each option set over the recipe is cleared in turn (then
    all of them at once); the first clearing after which the model builds is named, with how to clear
    it. Where no clearing helps, the recipe is not what failed and ``err`` is returned as it is. These
    builds happen only on this error path.
    """
    recipe, keys = args.get("recipe"), list(overridden(args, defaults))
    for tried in [[key] for key in keys] + ([keys] if len(keys) > 1 else []):
        try:
            build(**{**args, **dict.fromkeys(tried)})
        except ConfigError:
            continue
        sets = " and ".join(f"model.{key} ({flow(args[key])})" for key in tried)
        clear = " ".join(f"--model.{key} null" for key in tried)
        why = str(err).split(";")[0]
        return ConfigError(f"--model.recipe {recipe}: the config sets {sets}, which the recipe would replace "
                           f"(as set: {why}); give {clear} or drop {'it' if len(tried) == 1 else 'them'}")
    return err
