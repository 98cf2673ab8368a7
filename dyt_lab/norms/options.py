"""The options of the squashing layers and the values each may take: one vocabulary, and its checks.

Both the DyT family (``dyt.py``) and ``factored`` (``factored.py``) compute ``squash(a * (x - m) + s)``
and name its parts alike:

- ``squash``: a point-wise function by name, any key of ``functional.SQUASHES`` (tanh, erf, ..., none);
- ``alpha``: ``scalar`` (one learnable alpha, DyT's) or ``channel`` (one per channel);
- ``shift``: ``none``, ``scalar`` or ``channel``: a learnable shift inside the squash (init 0);
- ``center``: ``none`` (m = 0); ``sample`` (each sample's per-channel mean over its positions, no batch
  statistic); ``batch`` (the per-channel batch mean in training and a running mean in eval, as BatchNorm);
- ``scale`` (``factored``): ``none``, ``batch_std``, ``running_std``, ``alpha`` or ``alpha_channel``.

A layer declares the values it takes as a ``Literal`` hint on its constructor, all of these or a subset;
the registry's ``choices_of`` reads those hints, as jsonargparse's ``--help`` does.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from dyt_lab.errors import check_int
from dyt_lab.norms.functional import SQUASHES

Squash = Literal[tuple(SQUASHES)]  # type: ignore[valid-type]  # the names live in the table alone
Shape = Literal["scalar", "channel"]
Shift = Literal["none", "scalar", "channel"]
Center = Literal["none", "sample", "batch"]
Scale = Literal["none", "batch_std", "running_std", "alpha", "alpha_channel"]
VOCABULARY: dict[str, object] = {"squash": Squash, "alpha": Shape, "shift": Shift, "center": Center, "scale": Scale}

# factored's subsets: its factorial crosses BatchNorm's centering (a std is taken around the center, so a
# per-sample center would make it another layer) with no squash and the two fused ones.
FactoredCenter = Literal["none", "batch"]
FactoredSquash = Literal["none", "tanh", "erf"]


def check_choice(option: str, value: object, choices: object) -> str:
    """Return ``value`` if it is one of ``choices`` (a Literal), else raise a one-line ValueError naming both."""
    names = get_args(choices)
    if not isinstance(value, str) or value not in names:
        raise ValueError(f"{option} must be one of {', '.join(names)}; got {value!r}")
    return value


def check_num_features(num_features: object) -> int:
    """Return ``num_features`` if it is a positive int, else raise a one-line ValueError."""
    return check_int("num_features", num_features, error=ValueError)


def check_alpha_init(alpha_init: object) -> float:
    """Return ``alpha_init`` as a float if it is a finite number, else raise a one-line ValueError."""
    if isinstance(alpha_init, bool) or not isinstance(alpha_init, (int, float)) or not math.isfinite(alpha_init):
        raise ValueError(f"alpha_init must be a finite number, got {alpha_init!r}")
    return float(alpha_init)


def check_momentum(momentum: object) -> float:
    """Return ``momentum`` as a float if it is in [0, 1] (a running statistic's update rate), else raise."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    return float(momentum)


def check_eps(eps: object) -> float:
    """Return ``eps`` as a float if it is a finite number >= 0, else raise a one-line ValueError."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < math.inf:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)
