"""``dyt-lab probe``: the diagnostics of one run, or two side by side, as PNG files and ``stats.csv``.

    dyt-lab probe --config CFG [--ckpt_path CKPT]                 # a fresh model, or a trained one
    dyt-lab probe --ckpt_path A.ckpt --compare_ckpt B.ckpt        # configs from the runs' folders

Models and data are built from LightningCLI configs exactly as ``dyt-lab fit`` builds them; a
checkpoint without ``--config`` uses the ``config.yaml`` its run saved two folders up. Each run is
probed on the first ``--probe_size`` images of its own validation set, in eval mode.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from dyt_lab.diagnostics.hooks import SiteProbe, probe_images, run_probe
from dyt_lab.diagnostics.sites import SiteError, network_of, select_sites
from dyt_lab.errors import ConfigError
from dyt_lab.models import sites_of
from dyt_lab.norms import norm_name
from dyt_lab.training.checkpoints import read_matching_checkpoint, run_config_of

OUTPUTS = ("s_curves.png", "gain_vs_inv_std.png", "stats.png", "stats.csv")


@dataclass
class Run:
    """One probed run: its label, network family and per-site results."""

    label: str
    family: str
    probes: dict[str, SiteProbe]


class OneLineParser(argparse.ArgumentParser):
    """argparse that refuses a value in one ``error:`` line (exit 2), not its usage block."""

    def error(self, message: str):
        raise ConfigError(f"{message}; see dyt-lab probe --help")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The probe command's arguments."""
    parser = OneLineParser(
        prog="dyt-lab probe", description="Norm diagnostics of one run, or two side by side: S curves, gain "
        "against 1/std and per-site statistics as PNG files, and stats.csv.")
    add = parser.add_argument
    add("--config", action="append", default=[], help="LightningCLI config of the run (repeat to compose, as fit)")
    add("--ckpt_path", help="checkpoint to load (default: a fresh model); alone, its run's config.yaml is used")
    add("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. model.norm=dyt")
    add("--compare", action="append", default=[], metavar="CONFIG",
        help="config of a second run to compare with (default: the first run's)")
    add("--compare_ckpt", help="checkpoint of the second run")
    add("--compare_set", action="append", default=[], metavar="KEY=VALUE", help="override for the second run")
    add("--sites", nargs="+", metavar="PATTERN", help="glob patterns of the sites to probe (default: all)")
    add("--num_points", type=int, default=2000, help="points per site in the S curves (default 2000)")
    add("--probe_size", type=int, default=256, help="validation images in the probe batch (default 256)")
    add("--max_sites", type=int, default=16, help="sites drawn in an S-curve grid (default 16)")
    add("--batch_stats", action="store_true", help="BatchNorm/CenteredDyT normalize with the batch's statistics")
    add("--out", type=Path, default=Path("runs/probe"), help="folder for the PNGs and stats.csv (default runs/probe)")
    args = parser.parse_args(argv)
    for name in ("num_points", "probe_size", "max_sites"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.config and not args.ckpt_path:
        parser.error("give --config, --ckpt_path or both")
    return args


def run_configs(configs: list[str], ckpt: str | None) -> list[str]:
    """A run's configs: those given, else the ``config.yaml`` its checkpoint's run saved two folders up."""
    if configs or not ckpt:
        return configs
    return [str(run_config_of(ckpt, "--config"))]


def fit_flags(configs: list[str], overrides: list[str]) -> list[str]:
    """The ``fit`` flags that build a run: its configs, then its ``KEY=VALUE`` overrides."""
    flags = [f"--config={c}" for c in configs]
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. model.norm=dyt), got '{item}'")
        flags.append(f"--{key.removeprefix('--')}={value}")
    return flags


def load_checkpoint(model: nn.Module, path: str) -> int:
    """Load a Lightning checkpoint's weights into ``model`` and return its epoch; a mismatch is one ConfigError line."""
    ckpt = read_matching_checkpoint(model, path)
    model.load_state_dict(ckpt["state_dict"])
    return int(ckpt.get("epoch", -1))


def probe_run(flags: list[str], ckpt: str | None, args: argparse.Namespace, strict_sites: bool = True) -> Run:
    """Build one run's model and data, load its checkpoint, and probe its sites."""
    from dyt_lab.runs import load_run  # Lightning's seconds of import: only when a run is built

    model, datamodule, _ = load_run(flags)
    epoch = load_checkpoint(model, ckpt) if ckpt else None
    net = network_of(model)
    sites = select_sites(sites_of(net), args.sites, strict=strict_sites)
    datamodule.setup("validate")
    images = probe_images(datamodule.val_dataloader(), args.probe_size)
    kinds = Counter(norm_name(net.get_submodule(site)) for site in sites)
    label = f"{type(net).__name__} {'+'.join(k for k, _ in kinds.most_common())}"
    label += f", epoch {epoch + 1}" if epoch is not None else ", untrained"
    probes = run_probe(net, images, sites, args.num_points, args.batch_stats)
    return Run(label, type(net).__name__, probes)


def shared_sites(first: Run, second: Run) -> list[str]:
    """The site names both runs have, in the first run's order; says so on stderr when some are not shared."""
    shared = [site for site in first.probes if site in second.probes]
    if first.family != second.family:
        print(f"note: comparing a {first.family} with a {second.family}: only their {len(shared)} shared "
              "site names are compared", file=sys.stderr)
    elif len(shared) < max(len(first.probes), len(second.probes)):
        print(f"note: the runs differ in sites: only their {len(shared)} shared site names are compared",
              file=sys.stderr)
    if not shared:
        raise SiteError(f"--compare: the {first.family} and the {second.family} share no site names; "
                        "nothing to compare")
    return shared


def write_outputs(runs: list[Run], out: Path, max_sites: int) -> list[Path]:
    """Write the three figures and ``stats.csv`` (one row per site and run) into ``out``."""
    from dyt_lab.diagnostics.plots import gain_figure, s_curve_figure, save_png, stats_figure

    probes = {run.label: run.probes for run in runs}
    stats = {run.label: [p.stats for p in run.probes.values()] for run in runs}
    paths = [save_png(s_curve_figure(probes, max_sites), out / OUTPUTS[0]),
             save_png(gain_figure(stats), out / OUTPUTS[1]),
             save_png(stats_figure(stats), out / OUTPUTS[2])]
    rows = [{"run": label, **s.row()} for label, site_stats in stats.items() for s in site_stats]
    with open(out / OUTPUTS[3], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [*paths, out / OUTPUTS[3]]


def summary_table(runs: list[Run]) -> str:
    """Per site: mean offset, saturated share and gain of each run, as aligned text."""
    width = max(len(site) for site in runs[0].probes)
    cols = [max(len(run.label), 21) for run in runs]  # a run's three numbers take 21 characters
    lines = [" " * width + "".join(f"    {run.label:>{col}}" for run, col in zip(runs, cols)),
             f"{'site':<{width}}" + "".join(f"    {'offset':>{col - 14}} {'sat':>5} {'gain':>7}" for col in cols)]
    for site in runs[0].probes:
        lines.append(f"{site:<{width}}" + "".join(
            f"    {run.probes[site].stats.mean_offset:{col - 14}.2f} {run.probes[site].stats.saturation:5.0%} "
            f"{run.probes[site].stats.gain:7.3g}" for run, col in zip(runs, cols)))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Entry point of ``dyt-lab probe``."""
    args = parse_args(argv)
    configs = run_configs(args.config, args.ckpt_path)
    runs = [probe_run(fit_flags(configs, args.set), args.ckpt_path, args)]
    if args.compare or args.compare_ckpt or args.compare_set:
        # The second run: its own config or checkpoint, else the first run's config (with --compare_set).
        second_configs = run_configs(args.compare, args.compare_ckpt) if args.compare or args.compare_ckpt else configs
        second = probe_run(fit_flags(second_configs, args.compare_set), args.compare_ckpt, args, strict_sites=False)
        if second.label == runs[0].label:
            runs[0].label, second.label = f"A: {runs[0].label}", f"B: {second.label}"
        keep = shared_sites(runs[0], second)
        runs = [Run(r.label, r.family, {s: r.probes[s] for s in keep}) for r in (runs[0], second)]
    paths = write_outputs(runs, args.out, args.max_sites)
    print(summary_table(runs))
    print("wrote " + ", ".join(str(p) for p in paths))
