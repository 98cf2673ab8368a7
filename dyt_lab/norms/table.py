"""The registry as a Markdown table, for ``dyt-lab norms`` and the README."""

from __future__ import annotations

from dyt_lab.norms.registry import NORMS


def norms_table() -> str:
    """The registry as a Markdown table: name, formula, parameters, options, supported layouts."""
    rows = ["| name | formula | parameters | options | layouts |", "|---|---|---|---|---|"]
    for entry in NORMS.values():
        name = entry.name + (f" ({', '.join(entry.aliases)})" if entry.aliases else "")
        options = ", ".join(entry.options()) or "-"
        rows.append(f"| `{name}` | `{entry.formula}` | {entry.params} | {options} | {', '.join(entry.layouts)} |")
    return "\n".join(rows)
