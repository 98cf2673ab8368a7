"""The registry as Markdown tables, for ``dyt-lab norms`` and the README."""

from __future__ import annotations

from dyt_lab.norms.functional import SQUASH_FORMULAS
from dyt_lab.norms.fused import FUSED_SQUASHES
from dyt_lab.norms.registry import NORMS


def norms_table() -> str:
    """The registry as a Markdown table (name, formula, parameters, options, layouts), then the squashes."""
    rows = ["| name | formula | parameters | options | layouts |", "|---|---|---|---|---|"]
    for entry in NORMS.values():
        name = entry.name + (f" ({', '.join(entry.aliases)})" if entry.aliases else "")
        options = ", ".join(entry.options()) or "-"
        rows.append(f"| `{name}` | `{entry.formula}` | {entry.params} | {options} | {', '.join(entry.layouts)} |")
    return "\n".join(rows) + "\n\n" + squashes_table()


def squashes_table() -> str:
    """The DyT family's ``squash`` option as a Markdown table: name, formula, whether a kernel fuses it."""
    rows = ["`dyt_general`'s `squash` (the point-wise functions of the Derf paper's search, and `none`), "
            "with u = a * (x - m) + s:", "",
            "| squash | formula | fused |", "|---|---|---|"]
    for name, formula in SQUASH_FORMULAS.items():
        rows.append(f"| `{name}` | `{formula}` | {'yes' if name in FUSED_SQUASHES else 'no (eager)'} |")
    return "\n".join(rows)
