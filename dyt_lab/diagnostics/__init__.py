"""Norm diagnostics: what each norm site sees and does, in TensorBoard (``NormDiagnostics``) and in files (``probe``).

``stats.py`` computes a site's statistics, ``hooks.py`` runs the probe batch with temporary hooks,
``plots.py`` draws the figures, ``callbacks.py`` logs them during training and ``probe.py`` is the
``dyt-lab probe`` command.
"""

from dyt_lab.diagnostics.callbacks import NormDiagnostics
from dyt_lab.diagnostics.hooks import SiteProbe, probe_images, run_probe
from dyt_lab.diagnostics.sites import SiteError, select_sites
from dyt_lab.diagnostics.stats import SiteStats

__all__ = ["NormDiagnostics", "SiteError", "SiteProbe", "SiteStats", "probe_images", "run_probe", "select_sites"]
