"""The equivalence margin of a study's verdicts: its default, its check, and which one a report uses.

A study file and a claims file set it, the engine records it with the study's design, and every report
judges by it (TOST within +-margin). It sits with the definition, below both the file parsers and the
report, so each of them reads the one default and the one check.
"""

from __future__ import annotations

import math

from dyt_lab.errors import ConfigError

DEFAULT_MARGIN = 0.005  # half a point of accuracy


def check_margin(margin) -> float:
    """An equivalence margin as a float >= 0, or a ValueError that names it."""
    try:
        m = float(margin)
    except (TypeError, ValueError):
        raise ValueError(f"equivalence margin {margin!r} is not a number; give e.g. 0.005 (0.5 points)") from None
    if not math.isfinite(m) or m < 0:
        raise ValueError(f"equivalence margin {margin!r} must be a finite number >= 0, e.g. 0.005 (0.5 points)")
    return m


def report_margin(design: dict, given=None) -> float:
    """The margin a report judges by: ``given`` (its ``--margin``), else the one the study recorded in its design."""
    try:
        return check_margin(design.get("margin", DEFAULT_MARGIN) if given is None else given)
    except ValueError as err:
        raise ConfigError(f"--margin: {err}") from None
