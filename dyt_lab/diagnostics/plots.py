"""The diagnostics' figures, shared by TensorBoard (``add_figure``) and ``dyt-lab probe`` (PNG files).

Each function takes one run or two (``{label: ...}``, drawn side by side or overlaid) and returns a
``matplotlib.figure.Figure`` built without pyplot, so nothing global (backend, open figures) changes.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter

from dyt_lab.diagnostics.hooks import SiteProbe
from dyt_lab.diagnostics.sites import spread_out
from dyt_lab.diagnostics.stats import SATURATION_LEVEL, SiteStats

RUN_STYLES = [("tab:blue", "o"), ("tab:red", "s")]  # (colour, marker) of the first and second run
PANEL = (2.3, 2.0)  # inches per S-curve panel
# (SiteStats attribute, panel title) for the per-site statistics figure
STAT_PANELS = [
    ("input_std", "input std"),
    ("mean_offset", "mean offset |mean_c| / std\n(BN subtracts it, DyT keeps it)"),
    ("channel_std_spread", "spread of per-channel std\n(std of std_c / mean)"),
    ("max_abs", "max |x|"),
    ("saturation", f"saturated share, |argument| > {SATURATION_LEVEL:g}"),
    ("gain", "gain: alpha (DyT) or mean 1/divisor (norms)"),
]


def _plain_log_axis(axis) -> None:
    """Log-scale ticks at 1, 2, 5 x 10^k written as plain numbers (0.5, 1, 2), no minor labels."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _few_ticks(ax: Axes) -> None:
    """Four ticks per axis: small panels stay legible, and drawing them is what costs most."""
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    ax.tick_params(labelsize=6)


def _grid(count: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def s_curve_figure(runs: dict[str, dict[str, SiteProbe]], max_sites: int = 16) -> Figure:
    """Input -> output-before-affine scatter per site (the paper's Figure 2), one grid per run, side by side.

    Every run must hold the same sites; at most ``max_sites`` of them are drawn, evenly spread
    over depth. Points are coloured by channel, so a norm's per-channel lines show as a fan.
    """
    sites = spread_out(list(next(iter(runs.values()))), max_sites)
    rows, cols = _grid(len(sites))
    width, height = PANEL[0] * cols, PANEL[1] * rows + 0.8  # inches per run
    fig = Figure(figsize=(width * len(runs), height))
    fig.suptitle("norm input x (horizontal) against output before the affine (vertical); colour: channel",
                 fontsize=9)
    subfigs = fig.subfigures(1, len(runs), squeeze=False)[0]
    for i, (subfig, (label, probes)) in enumerate(zip(subfigs, runs.items())):
        subfig.set_facecolor("none")  # keeps the figure's title visible
        subfig.suptitle(label, fontsize=11, fontweight="bold", y=1 - 0.3 / height)
        if i:  # a rule between the runs
            fig.add_artist(Line2D([i / len(runs)] * 2, [0.02, 1 - 0.55 / height], color="0.6", linewidth=1))
        # Fixed margins in inches: a layout engine would cost as much as drawing the panels.
        subfig.subplots_adjust(left=0.45 / width, right=1 - 0.1 / width, bottom=0.3 / height,
                               top=1 - 0.75 / height, wspace=0.35, hspace=0.45)
        axes = subfig.subplots(rows, cols, squeeze=False).flatten()
        for ax, site in zip(axes, sites):
            probe = probes[site]
            ax.scatter(probe.x.numpy(), probe.y.numpy(), c=probe.channel.numpy(), cmap="hsv", s=2, alpha=0.6,
                       vmin=0, vmax=probe.stats.channels, linewidths=0)
            ax.set_title(site, fontsize=7)
            ax.text(0.03, 0.97, f"{probe.stats.kind}\ngain {probe.stats.gain:.2g}\nsat {probe.stats.saturation:.0%}"
                    f"\noffset {probe.stats.mean_offset:.2f}", transform=ax.transAxes, fontsize=6, va="top")
            _few_ticks(ax)
        for ax in axes[len(sites):]:
            ax.set_visible(False)
    return fig


def gain_figure(runs: dict[str, list[SiteStats]]) -> Figure:
    """Alpha (DyT) or 1/divisor (norms) against 1/std of the input, one point per site (the paper's Figure 8)."""
    fig = Figure(figsize=(5.5, 4.5))
    fig.subplots_adjust(left=0.13, right=0.98, bottom=0.11, top=0.93)  # fixed: cheaper than a layout engine
    ax = fig.subplots()
    lows, highs = [], []
    for (label, stats), (colour, marker) in zip(runs.items(), RUN_STYLES):
        points = [(1 / s.input_std, s.gain) for s in stats if s.input_std > 0 and s.gain > 0]
        if not points:
            continue
        xs, ys = zip(*points)
        depth = [i / max(len(points) - 1, 1) for i in range(len(points))]
        art = ax.scatter(xs, ys, c=depth, cmap="viridis", marker=marker, edgecolors=colour, linewidths=1.2,
                         s=40, label=label)
        lows.append(min(min(xs), min(ys)))
        highs.append(max(max(xs), max(ys)))
    if lows:
        line = [min(lows) / 1.5, max(highs) * 1.5]
        ax.plot(line, line, "--", color="grey", linewidth=1, label="gain = 1/std")
        fig.colorbar(art, ax=ax, label="depth (first site 0, last 1)")
    ax.set(xscale="log", yscale="log")
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    ax.set(xlabel="1 / std of the site's input",
           ylabel="alpha (DyT) or mean 1/divisor (norms)", title="gain against 1/std, one point per site")
    ax.legend(fontsize=8)
    return fig


def stats_figure(runs: dict[str, list[SiteStats]]) -> Figure:
    """The per-site statistics of one or two runs over the same sites, so diverging sites stand out."""
    sites = [s.site for s in next(iter(runs.values()))]
    fig = Figure(figsize=(max(9.0, 0.35 * len(sites) * 3), 7.5), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True).flatten()
    for ax, (name, title) in zip(axes, STAT_PANELS):
        for (label, stats), (colour, marker) in zip(runs.items(), RUN_STYLES):
            ax.plot(range(len(stats)), [getattr(s, name) for s in stats], marker=marker, color=colour,
                    markersize=4, linewidth=1, label=label)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if name in ("input_std", "max_abs", "gain"):
            ax.set_yscale("log")
            _plain_log_axis(ax.yaxis)
    for ax in axes[3:]:
        ax.set_xticks(range(len(sites)), sites, rotation=90, fontsize=6)
    axes[0].legend(fontsize=8)
    fig.suptitle("norm-site statistics on the probe batch, sites in forward order", fontsize=10)
    return fig


def save_png(fig: Figure, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` as a PNG and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
