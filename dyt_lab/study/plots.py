"""The report's PNGs: Optuna's own matplotlib plots, plus objective by placement x variant.

Optuna plots history, each parameter (slice) and importances; it has no view of two categorical
parameters against each other, which is the study's question (which BN sites, which DyT variant),
so that heatmap is drawn here.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import matplotlib.pyplot as plt

    return plt


def save_figure(ax_or_axes, path: Path) -> Path:
    axes = ax_or_axes.flat[0] if hasattr(ax_or_axes, "flat") else ax_or_axes
    figure = axes.figure
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    return path


def placement_and_variant(params: list[str]) -> tuple[str | None, str | None]:
    """The searched keys that name the placement and the norm variant: last segment ``placement`` / ``norm``."""
    def find(word: str) -> str | None:
        exact = [p for p in params if p.rsplit(".", 1)[-1] == word]
        return exact[0] if exact else None

    return find("placement"), find("norm")


def mean_by(trials, row: str, column: str | None) -> dict[tuple, tuple[float, int]]:
    """(row value, column value) -> (mean objective, trial count) over completed trials."""
    cells: dict[tuple, list[float]] = {}
    for t in trials:
        key = (str(t.params.get(row)), str(t.params.get(column)) if column else "")
        cells.setdefault(key, []).append(t.value)
    return {key: (sum(v) / len(v), len(v)) for key, v in cells.items()}


def plot_placement_variant(trials, row: str, column: str | None, metric: str, path: Path) -> Path:
    """Heatmap (one column, for one key) of the mean objective per placement x variant cell."""
    plt = pyplot()
    cells = mean_by(trials, row, column)
    rows = sorted({r for r, _ in cells})
    cols = sorted({c for _, c in cells})
    grid = [[cells.get((r, c), (math.nan, 0))[0] for c in cols] for r in rows]
    low, high = min(v for v, _ in cells.values()), max(v for v, _ in cells.values())
    with plt.style.context("default"):  # Optuna's plots switch the global style to ggplot's grid
        fig, ax = plt.subplots(figsize=(2.5 + 1.4 * len(cols), 1.8 + 0.5 * len(rows)))
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                if (r, c) in cells:
                    mean, n = cells[(r, c)]
                    bright = high > low and (mean - low) / (high - low) > 0.6  # viridis turns yellow
                    ax.text(j, i, f"{mean:.3g}\n(n={n})", ha="center", va="center", fontsize=8,
                            color="black" if bright else "white")
        ax.set_xticks(range(len(cols)), cols if column else ["all trials"], rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel(column or "")
        ax.set_ylabel(row)
        ax.set_title(f"mean {metric}, completed trials")
        fig.colorbar(image, ax=ax)
        return save_figure(ax, path)


def write_plots(study: optuna.Study, folder: Path, metric: str) -> tuple[list[Path], list[str]]:
    """Write every plot that the study's trials allow; return the files and notes on those skipped."""
    from optuna.visualization import matplotlib as ovm

    files, notes = [], []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return files, ["no plots: no completed trial yet"]
    params = sorted({p for t in complete for p in t.params})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        files.append(save_figure(ovm.plot_optimization_history(study, target_name=metric), folder / "history.png"))
        for param in params:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", param)
            files.append(save_figure(ovm.plot_slice(study, params=[param], target_name=metric),
                               folder / f"objective_vs_{name}.png"))
        try:
            files.append(save_figure(ovm.plot_param_importances(study), folder / "importances.png"))
        except Exception as err:  # too few or too uniform trials: say so, draw the rest
            notes.append(f"no importances plot: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    placement, variant = placement_and_variant(params)
    if placement or variant:
        row, column = (placement, variant) if placement else (variant, None)
        files.append(plot_placement_variant(complete, row, column, metric, folder / "placement_x_variant.png"))
    else:
        notes.append("no placement x variant plot: no searched key ends in 'placement' or 'norm'")
    return files, notes
