"""The report's PNGs: Optuna's own matplotlib plots, objective by placement x variant, and for a seeded
study its configurations, factor effects and a response curve over a numeric factor.

Optuna plots history, each parameter (slice) and importances; it has no view of two categorical
parameters against each other, which is the study's question (which BN sites, which DyT variant),
so that heatmap is drawn here. Optuna's slices show one point per trial, which in a seeded study is one
seed run: there a configuration's mean with its interval over seeds is what is drawn instead.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from dyt_lab.study.report.statistics import summarize, text_of

INTERVAL = "95% t-interval over seeds"  # what every error bar and band of these plots is


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


def varied_keys(trials) -> list[str]:
    """The searched keys that took more than one value over these trials: a key held constant explains nothing,
    yet Optuna's importance evaluator can hand it a share (a third, seen in a report)."""
    keys = sorted({p for t in trials for p in t.params})
    return [k for k in keys if len({str(t.params.get(k)) for t in trials}) > 1]


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
        # as wide as the row labels need (a norm spec is a long JSON label), or tight_layout gives up and warns
        label_width = 0.07 * max(len(r) for r in rows)
        fig, ax = plt.subplots(figsize=(2.5 + 1.4 * len(cols) + label_width, 1.8 + 0.5 * len(rows)))
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


def write_plots(study: optuna.Study, folder: Path, metric: str, seeded: bool = False) -> list[Path]:
    """Write every plot that the study's trials allow and return them. ``seeded``: a trial is one seed run, so
    Optuna's per-trial slices are left out (``configurations_plot`` draws each configuration over its seeds)."""
    from optuna.visualization import matplotlib as ovm

    files = []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return files
    params = sorted({p for t in complete for p in t.params})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        files.append(save_figure(ovm.plot_optimization_history(study, target_name=metric), folder / "history.png"))
        for param in [] if seeded else params:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", param)
            files.append(save_figure(ovm.plot_slice(study, params=[param], target_name=metric),
                               folder / f"objective_vs_{name}.png"))
        varied = varied_keys(complete)
        if len(varied) >= 2:  # as the report's table: one key would take all of the share by construction
            try:
                files.append(save_figure(ovm.plot_param_importances(study, params=varied, target_name=metric),
                                         folder / "importances.png"))
            except Exception:  # too few or too uniform trials: the report's importances section says why
                pass
    placement, variant = placement_and_variant(params)
    if placement or variant:
        row, column = (placement, variant) if placement else (variant, None)
        files.append(plot_placement_variant(complete, row, column, metric, folder / "placement_x_variant.png"))
    return files


def configurations_plot(table: pd.DataFrame, factors: list[str], folder: Path, metric: str,
                        bounds: tuple[float, float] | None = None, names: dict[str, str] | None = None) -> Path:
    """Each configuration's mean over its seeds with its 95% t-interval (the report's table, best on top); a
    configuration with no interval (one seed, or seeds that agree exactly) is a hollow point. ``names``: a
    configuration's familiar name (BatchNorm) by its label."""
    plt = pyplot()
    stats_ = summarize(table, factors, bounds=bounds).iloc[::-1]  # best mean last, drawn at the top
    labels = [text_of({f: r[f] for f in factors}) for r in stats_.to_dict("records")]
    labels = [f"{(names or {}).get(lab)}: {lab}" if (names or {}).get(lab) else lab for lab in labels]
    rows = np.arange(len(stats_))
    known = stats_["ci_low"].notna().to_numpy()
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * len(stats_)))
    ax.errorbar(stats_["mean"][known], rows[known], fmt="o", capsize=3,
                xerr=[(stats_["mean"] - stats_["ci_low"])[known], (stats_["ci_high"] - stats_["mean"])[known]])
    if not known.all():
        ax.plot(stats_["mean"][~known], rows[~known], "o", mfc="none", color="C0", label="too few seeds: no interval")
        ax.legend(fontsize=7)
    ax.set_yticks(rows, labels, fontsize=7)
    ax.set_xlabel(f"{metric}: mean, {INTERVAL}")  # the bars' meaning on the axis, where no legend covers them
    ax.set_title(f"{metric} per configuration", loc="left")
    return save_figure(ax, folder / "configurations.png")


def main_effects_plot(table: pd.DataFrame, factors: list[str], folder: Path, metric: str,
                      bounds: tuple[float, float] | None = None) -> Path:
    """One panel per factor: the mean objective at each level, with the 95% t-interval over seeds."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 3.4), sharey=True, squeeze=False)
    for ax, factor in zip(axes.flat, factors):
        # the level's mean per seed (over the other factors), then the t-interval over seeds
        by_seed = table.assign(_level=table[factor].astype(str)).groupby(["_level", "seed"], as_index=False)["value"].mean()
        per_level = summarize(by_seed, ["_level"], bounds=bounds)
        per_level = per_level.sort_values("_level")
        ax.errorbar(per_level["_level"], per_level["mean"], fmt="o-", capsize=4, label=f"mean, {INTERVAL}",
                    yerr=[(per_level["mean"] - per_level["ci_low"]).fillna(0),
                          (per_level["ci_high"] - per_level["mean"]).fillna(0)])
        ax.set_title(factor)
        ax.set_xlabel("level")
    axes.flat[0].set_ylabel(metric)
    axes.flat[0].legend(fontsize=7)
    return save_figure(axes, folder / "main_effects.png")


def response_plot(table: pd.DataFrame, factors: list[str], x: str, reference: dict | None, folder: Path,
                  metric: str, loss_column: str) -> Path:
    """The objective and the last training loss against ``x``, mean and 95% interval per series (the other
    factors), over the band (mean and interval) of the reference configuration at the same series levels.

    Intervals stay in the quantity's range: clipped at 0 for the loss (a t-interval of a loss near 0 runs below
    it) and to [0, 1] for an accuracy; the panel's title says so."""
    plt = pyplot()
    series_by = [f for f in factors if f != x and table.loc[table[x].astype(str) != "-", f].astype(str).nunique() > 1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), squeeze=False)
    panels = ((axes[0, 0], "value", metric, (0.0, 1.0) if "acc" in metric else None),
              (axes[0, 1], loss_column, "train loss (last epoch)", (0.0, math.inf)))
    for ax, column, label, bounds in panels:
        data = table.dropna(subset=[column])
        for key, rows in (data.groupby(series_by) if series_by else [((), data)]):
            key = key if isinstance(key, tuple) else (key,)
            name = ", ".join(f"{f}={k}" for f, k in zip(series_by, key)) or "all"
            curve = rows[rows[x].astype(str) != "-"].assign(_x=lambda d: d[x].astype(float))
            stats_ = summarize(curve, ["_x"], value=column, bounds=bounds)
            stats_ = stats_.sort_values("_x")
            line = ax.errorbar(stats_["_x"], stats_["mean"], fmt="o-", capsize=3, label=f"{name}",
                               yerr=[(stats_["mean"] - stats_["ci_low"]).fillna(0), (stats_["ci_high"] - stats_["mean"]).fillna(0)])
            ref_rows = rows[rows[x].astype(str) == "-"]
            if reference is not None:
                ref_rows = ref_rows[np.logical_and.reduce([ref_rows[k].astype(str) == str(v) for k, v in reference.items()
                                                           if k in ref_rows])] if len(ref_rows) else ref_rows
            if len(ref_rows) >= 2:
                band = summarize(ref_rows.assign(_r="ref"), ["_r"], value=column, bounds=bounds).iloc[0]
                low, high = (band["ci_low"], band["ci_high"]) if pd.notna(band["ci_low"]) else (band["mean"],) * 2
                color = line[0].get_color()
                ax.axhspan(low, high, color=color, alpha=0.15)
                ax.axhline(band["mean"], color=color, ls="--", lw=1, label=f"reference, {name}")
        ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(label)
        clipped = "" if bounds is None else ", clipped at 0" if bounds[1] == math.inf else \
            f", clipped to [{bounds[0]:g}, {bounds[1]:g}]"
        ax.set_title(f"mean, {INTERVAL}{clipped}", fontsize=8, loc="left")
        ax.legend(fontsize=7)
    return save_figure(axes, folder / f"{x.split('.')[-1]}_response.png")
