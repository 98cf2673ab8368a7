"""Markdown for the study report: tables readable as plain text on a terminal that paste into an issue, and
the one way each kind of cell (a number, an interval, a p-value, a verdict) is written in them."""

from __future__ import annotations

import numpy as np
import pandas as pd


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns, readable as plain text too."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def frame_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table, each cell as its text."""
    return markdown_table(list(frame.columns), [[str(v) for v in row] for row in frame.itertuples(index=False)])


def publish(text: str, path) -> None:
    """Write a report's Markdown to ``path`` and print it, then where it went: the terminal and the file agree."""
    path.write_text(text)
    print(text)
    print(f"written: {path}")


def number(x, digits: int = 4) -> str:
    """A value to ``digits`` decimals, "-" where there is none."""
    return "-" if pd.isna(x) else f"{x:.{digits}f}"


def p_value(p) -> str:
    """A p-value to 2 significant digits, "-" where there is none."""
    return "-" if pd.isna(p) else f"{p:.2g}"


def interval(low, high) -> str:
    """``[0.9012, 0.9345]``, or why there is no interval."""
    return "too few seeds" if pd.isna(low) else f"[{low:.4f}, {high:.4f}]"


def with_interval(frame: pd.DataFrame, estimate: str, prefix: str = "") -> list[str]:
    """Each row's signed ``estimate`` with its interval (columns ``{prefix}ci_low``, ``{prefix}ci_high``)."""
    return [f"{e:+.4f} [{lo:+.4f}, {hi:+.4f}]" for e, lo, hi in
            zip(frame[estimate], frame[f"{prefix}ci_low"], frame[f"{prefix}ci_high"])]


def verdict_text(verdict: str, margin: float, row: dict | None = None) -> str:
    """A verdict as the tables print it: ``equivalent`` names its margin; ``inconclusive`` says, from ``row``'s
    ``mde`` and ``seeds_needed`` (``statistics.verdicts``), what it could have detected and what would decide it."""
    if verdict == "equivalent":
        return f"equivalent (±{margin:g})"
    if verdict != "inconclusive" or row is None or not np.isfinite(row.get("mde", np.nan)):
        return verdict
    needed = row.get("seeds_needed", np.nan)
    decide = "" if not isinstance(needed, (int, float)) or np.isnan(needed) else \
        f"; ±{margin:g} would need {needed:g} seeds, test images as they are" if np.isfinite(needed) else ""
    return f"inconclusive (detects ≥{row['mde']:.4f} with 80% power{decide})"
