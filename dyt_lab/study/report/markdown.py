"""Markdown tables for the study report: readable as plain text on a terminal, and paste into an issue."""

from __future__ import annotations


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns, readable as plain text too."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def publish(text: str, path) -> None:
    """Write a report's Markdown to ``path`` and print it, then where it went: the terminal and the file agree."""
    path.write_text(text)
    print(text)
    print(f"written: {path}")
