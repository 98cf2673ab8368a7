"""``NormDiagnostics``: the Lightning callback that shows, during training, what each norm site sees and does.

Switch it on from YAML (``trainer.callbacks``) or the command line
(``--trainer.callbacks+=dyt_lab.diagnostics.NormDiagnostics``). It costs nothing between its
intervals: alpha is read straight from the parameters (no hooks), and the probe batch goes through
the network with forward hooks that exist only for that one pass (see ``hooks.py``).
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from dyt_lab.diagnostics.hooks import SiteProbe, probe_images, run_probe
from dyt_lab.diagnostics.sites import network_of, select_sites
from dyt_lab.diagnostics.stats import parameter_summary
from dyt_lab.errors import ConfigError, check_int
from dyt_lab.models import sites_of
from dyt_lab.norms import DYT_FAMILY

S_CURVES_TAG = "diagnostics/s_curves"
GAIN_TAG = "diagnostics/gain_vs_inv_std"


class NormDiagnostics(Callback):
    """Log each norm site's alpha, input statistics, S curves and gain against 1/std to TensorBoard.

    Scalars: ``norms/<site>/alpha`` (per-channel alpha: also ``alpha_min``, ``alpha_max``; likewise
    ``shift``), and on the probe batch ``norms/<site>/input_std``, ``mean_offset``,
    ``channel_std_spread``, ``max_abs``, ``saturation`` and, for LN/BN-like sites, ``divisor``,
    ``divisor_spread``, ``scale``. Figures: ``diagnostics/s_curves``, ``diagnostics/gain_vs_inv_std``.
    """

    def __init__(
        self,
        alpha_every_n_steps: int = 50,
        stats_every_n_epochs: int = 1,
        curves_every_n_epochs: int = 20,
        sites: list[str] | None = None,
        probe_size: int = 32,
        max_points: int = 2000,
        max_sites: int = 16,
        batch_stats: bool = False,
    ) -> None:
        """Set what is logged and how often; an interval of 0 turns that part off.

        Args:
            alpha_every_n_steps: log every DyT-family site's alpha (and shift) every this many optimizer steps.
            stats_every_n_epochs: log the input statistics of every site on the probe batch every this many epochs.
            curves_every_n_epochs: log the S-curve grid and the gain-vs-1/std figure every this many epochs and after the last.
            sites: glob patterns of the sites to watch, e.g. ["blocks.*.norm1", "norm"] (None: every site).
            probe_size: images in the probe batch: the first ones of the validation set, the same every time.
            max_points: points per site in an S curve.
            max_sites: sites drawn in one S-curve grid, spread evenly over depth.
            batch_stats: BatchNorm and CenteredDyT normalize the probe batch with its own statistics, as in a
                training step, instead of their running ones.
        """
        for name, value in [("alpha_every_n_steps", alpha_every_n_steps), ("stats_every_n_epochs",
                            stats_every_n_epochs), ("curves_every_n_epochs", curves_every_n_epochs)]:
            check_int(f"NormDiagnostics {name}", value, 0)
        for name, value in [("probe_size", probe_size), ("max_points", max_points), ("max_sites", max_sites)]:
            check_int(f"NormDiagnostics {name}", value, 1)
        self.alpha_every_n_steps = alpha_every_n_steps
        self.stats_every_n_epochs = stats_every_n_epochs
        self.curves_every_n_epochs = curves_every_n_epochs
        self.site_patterns = sites
        self.probe_size = probe_size
        self.max_points = max_points
        self.max_sites = max_sites
        self.batch_stats = batch_stats
        self.sites: dict[str, str] = {}  # site -> layout, resolved in setup
        self._images: torch.Tensor | None = None  # the probe batch, (B, C, H, W) on the CPU
        self._alpha_step = -1  # the last step alpha was logged at (several batches share a step when accumulating)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Resolve the filter now, so an unknown site name fails before any training.
        self.sites = select_sites(sites_of(network_of(pl_module)), self.site_patterns)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.alpha_every_n_steps:
            self.log_alpha(trainer, pl_module)  # the starting point: alpha_init, or the resumed value

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int):
        step = trainer.global_step
        if self.alpha_every_n_steps and step % self.alpha_every_n_steps == 0 and step != self._alpha_step:
            self.log_alpha(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs
        stats_due = self.stats_every_n_epochs and epoch % self.stats_every_n_epochs == 0
        curves_due = self.curves_every_n_epochs and (epoch % self.curves_every_n_epochs == 0 or last)
        if not (stats_due or curves_due) or not trainer.is_global_zero or not trainer.loggers:
            return
        probes = self.probe(trainer, pl_module)
        if stats_due:
            self.log_stats(trainer, probes)
        if curves_due:
            self.log_figures(trainer, probes, f"epoch {epoch}, step {trainer.global_step}")

    def log_alpha(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log alpha (and shift) of every watched DyT-family site; one host sync for all of them."""
        self._alpha_step = trainer.global_step
        net = network_of(pl_module)
        tensors = {}
        for site in self.sites:
            module = net.get_submodule(site)
            if isinstance(module, DYT_FAMILY):
                tensors.update({f"norms/{site}/{k}": v for k, v in parameter_summary(module).items()})
        if tensors and trainer.is_global_zero:
            values = torch.stack([v.float() for v in tensors.values()]).tolist()
            for logger in trainer.loggers:
                logger.log_metrics(dict(zip(tensors, values)), step=trainer.global_step)

    def probe(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, SiteProbe]:
        """Run the probe batch through the network with hooks on the watched sites."""
        if self._images is None:
            loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else trainer.val_dataloaders
            if isinstance(loader, (list, tuple)):
                loader = loader[0] if loader else None
            if loader is None:
                raise ConfigError("NormDiagnostics needs a validation set: its probe batch comes from it")
            self._images = probe_images(loader, self.probe_size)
        return run_probe(network_of(pl_module), self._images.to(pl_module.device), self.sites, self.max_points,
                         self.batch_stats, trainer.precision_plugin.forward_context)

    def log_stats(self, trainer: Trainer, probes: dict[str, SiteProbe]) -> None:
        """Log the probe batch's statistics of every site as ``norms/<site>/<statistic>``."""
        metrics = {f"norms/{site}/{name}": value for site, probe in probes.items()
                   for name, value in probe.stats.scalars().items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def log_figures(self, trainer: Trainer, probes: dict[str, SiteProbe], label: str) -> None:
        """Log the S-curve grid and the gain-vs-1/std figure to every TensorBoard logger."""
        from dyt_lab.diagnostics.plots import gain_figure, s_curve_figure  # matplotlib: only when drawing

        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers:
            return
        figures = {S_CURVES_TAG: s_curve_figure({label: probes}, self.max_sites),
                   GAIN_TAG: gain_figure({label: [p.stats for p in probes.values()]})}
        for writer in writers:
            for tag, figure in figures.items():
                writer.add_figure(tag, figure, global_step=trainer.global_step, close=False)
