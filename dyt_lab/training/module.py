"""The LightningModules: ``ImageClassifier`` for any network, and the ViT/ResNet ones users pick by name.

``ImageClassifier`` takes a built ``net`` (dependency injection, as lightning-hydra-template does),
so a timm or torchvision model trains the same way (or a builder that names one, ``TimmModel``), and
``convert`` swaps that network's norms for a registry norm before the optimizer sees it.
``ViTClassifier`` and ``ResNetClassifier`` build a dyt_lab model from flat arguments, so
``--model.norm dyt --model.placement attn`` works on the command line. Their arguments are the
model's and ImageClassifier's, written out here so that ``--help``, YAML and a reader all see the
same list (a test checks it stays in step).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from dyt_lab.errors import ConfigError
from dyt_lab.models import NetBuilder, ResNet, ViT, site_table
from dyt_lab.models.alpha_rules import AlphaRule
from dyt_lab.models.placement import Placement, Rules
from dyt_lab.models.resnet import resolve_recipe
from dyt_lab.norms import NormError, NormSpec
from dyt_lab.norms.convert import NormConversion, find_norm_sites
from dyt_lab.predictions import write_predictions
from dyt_lab.training.calibration import AlphaCalibration
from dyt_lab.training.clipping import AdaptiveGradientClipping
from dyt_lab.training.schedule import WarmupCosineLR

MemoryFormat = Literal["channels_last", "contiguous"]
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def parameter_groups(net: nn.Module) -> list[dict]:
    """Split parameters into decayed (matrices, kernels) and not decayed (1-D: norms, alpha, biases).

    As in the paper's code (timm's convention): every 1-D parameter, and whatever the network
    lists in ``no_weight_decay()`` (position embedding, class token), gets weight decay 0.
    """
    skip = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


class ImageClassifier(LightningModule):
    """Train any image classification network with cross-entropy, AdamW and warmup+cosine."""

    def __init__(
        self,
        net: nn.Module,
        num_classes: int = 10,
        in_channels: int | None = None,
        image_size: int | None = None,
        convert: NormConversion | None = None,
        alpha_init: float | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable = WarmupCosineLR,
        label_smoothing: float = 0.0,
        memory_format: MemoryFormat = "channels_last",
    ) -> None:
        """Build the module.

        Args:
            net: the network, images (N, in_channels, image_size, image_size) -> logits (N, num_classes), or a
                placeholder (dyt_lab.models.TimmModel, TorchvisionModel) built here with the three values below.
            num_classes: number of classes (linked from the data module).
            in_channels: image channels (linked from the data module; None: unknown).
            image_size: image side in pixels (linked from the data module; None: unknown).
            convert: swap the network's norms for a registry norm ({to: dyt, kinds: [batchnorm], sites: [layer4.*]}).
            alpha_init: alpha0 of the DyT-family norms that convert puts in, unless its spec sets its own.
            optimizer: optimizer class or callable taking parameter groups (AdamW by default).
            scheduler: learning-rate scheduler callable, stepped every optimizer step (warmup + cosine).
            label_smoothing: cross-entropy label smoothing.
            memory_format: how images, feature maps and conv weights are stored: channels_last (NHWC: oneDNN's
                faster convolutions on CPU, and what CUDA's tensor cores want) or contiguous (NCHW).
        """
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)  # the CLI logs the full config instead
        if isinstance(net, NetBuilder):  # a network named by the user, sized by the data
            self.hparams["net"] = net.config()  # plain values: checkpoints compare it, the HParams tab shows it
            net = net.build(num_classes, in_channels, image_size)
        # The sites are read before converting: a site converted to identity is still a site of the table.
        self.norm_sites = net.norm_sites() if hasattr(net, "norm_sites") else find_norm_sites(net)
        try:
            self.converted = convert.apply(net, alpha_init) if convert is not None else []
        except NormError as err:  # a kind or site the network does not have, a norm that cannot go there
            raise ConfigError(f"--model.convert: {err}") from None
        # Measured on the MNIST5k testbed (ResNet-tiny, one thread): a training step 1.2x faster with BN.
        if memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"--model.memory_format must be one of {', '.join(MEMORY_FORMATS)}; got {memory_format!r}")
        self.memory_format = MEMORY_FORMATS[memory_format]
        self.net = net.to(memory_format=self.memory_format)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.label_smoothing = label_smoothing
        self._check_training_arguments()
        if in_channels and image_size:  # lets Lightning's summary show input and output shapes
            self.example_input_array = torch.zeros(2, in_channels, image_size, image_size)
        top_k = min(5, num_classes)
        # validate_args=False: the per-step input checks cost 2 ms a step (a profile of the MNIST5k testbed)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.train_loss_epoch = MeanMetric()  # the epoch's mean loss: the signal that does not saturate
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints, so a resumed run keeps its best

    def _check_training_arguments(self) -> None:
        """Refuse, in one line and before any run starts, what torch would only refuse at the first step.

        Building the optimizer and scheduler once here is cheap (no state is allocated yet) and runs
        torch's own checks of their arguments (a negative lr, betas outside [0, 1), ...).
        """
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ConfigError(f"--model.label_smoothing must be in [0, 1], got {self.label_smoothing}")
        try:
            self.scheduler(self.optimizer(parameter_groups(self.net)))
        except ConfigError:
            raise
        except (ValueError, TypeError) as err:
            raise ConfigError(f"--model.optimizer/--model.scheduler: {str(err).splitlines()[0]}") from None

    def placement_table(self) -> str | None:
        """The site -> layout -> norm table of the network, as built and converted (None: it has no norm)."""
        return site_table(self.net, self.norm_sites)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> logits ``(N, num_classes)``."""
        return self.net(x.contiguous(memory_format=self.memory_format) if x.dim() == 4 else x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_acc.update(logits.detach(), y)  # logged once per epoch, not per step: steps stay cheap
        self.train_loss_epoch.update(loss.detach())
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/acc", self.train_acc.compute())  # torchmetrics syncs the counts across DDP ranks
        self.train_acc.reset()
        self.log("train/loss_epoch", self.train_loss_epoch.compute())  # named as Lightning's on_epoch logs are
        self.train_loss_epoch.reset()

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move an (images, labels) batch directly; Lightning's generic path walks every collection type."""
        if isinstance(batch, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in batch):
            return [t.to(device, non_blocking=True) for t in batch]
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss(self._loss(logits, y))
        self.val_acc(logits, y)
        self.val_acc_top5(logits, y)
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/acc", self.val_acc, prog_bar=True)
        self.log("val/acc_top5", self.val_acc_top5)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # the sanity batches are not a result
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)  # equal on all ranks already

    def on_test_epoch_start(self) -> None:
        self._test_outputs: list[torch.Tensor] = []  # per batch: (2, B) predicted class and label

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.test_acc_top5(logits, y)
        self.log("test/loss", self._loss(logits, y))
        self.log("test/acc", self.test_acc)
        self.log("test/acc_top5", self.test_acc_top5)
        self._test_outputs.append(torch.stack([logits.argmax(dim=-1), y]).detach())

    def on_test_epoch_end(self) -> None:
        """Save each test image's prediction in the run folder (``predictions.py``), gathered over DDP ranks."""
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if not self._test_outputs or log_dir is None or self.trainer.sanity_checking:
            return
        outputs = torch.cat(self._test_outputs, dim=1)  # (2, n): this rank's predictions and labels
        # The split positions this rank was served, in order: arange for one process; under DDP the share
        # Lightning's DistributedSampler (no shuffle, padded to equal lengths) handed this rank.
        positions = torch.as_tensor(list(self.trainer.test_dataloaders.sampler), device=outputs.device)
        positions = positions[: outputs.shape[1]]
        rows = torch.cat([positions[None], outputs])  # (3, n)
        if self.trainer.world_size > 1:  # DistributedSampler pads every rank to the same n
            rows = self.all_gather(rows).transpose(0, 1).reshape(3, -1)  # (3, world_size * n)
        if self.trainer.is_global_zero:
            index, pred, label = rows.cpu().numpy()
            write_predictions(log_dir, index, pred, label)
        self._test_outputs = []

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Class probabilities ``(N, num_classes)`` for a batch of images (labels, if any, ignored)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)

    def configure_optimizers(self):
        optimizer = self.optimizer(parameter_groups(self.net))
        scheduler = self.scheduler(optimizer)
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
            scheduler.set_total_steps(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ViTClassifier(AlphaCalibration, ImageClassifier):
    """ImageClassifier around a dyt_lab ViT; every ViT argument is a model argument."""

    def __init__(
        self,
        preset: str = "vit_tiny",
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int | None = None,
        patch_size: int | None = None,
        dim: int | None = None,
        depth: int | None = None,
        heads: int | None = None,
        mlp_ratio: float | None = None,
        pool: Literal["cls", "avg"] | None = None,
        drop_path: float = 0.0,
        dropout: float = 0.0,
        norm: NormSpec = "layernorm",
        placement: Placement = "all",
        base_norm: NormSpec = "layernorm",
        rules: Rules | None = None,
        alpha_init: float | None = None,
        alpha_rule: AlphaRule = "constant",
        convert: NormConversion | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable = WarmupCosineLR,
        label_smoothing: float = 0.0,
        memory_format: MemoryFormat = "channels_last",
    ) -> None:
        """ImageClassifier around a dyt_lab ViT; every ViT argument is a model argument.

        Args:
            preset: architecture preset: vit_b_16, vit_l_16, vit_tiny, vit_small, vit_cifar, vit_mnist, vit_digits.
            num_classes: number of output classes.
            in_channels: image channels (3 for RGB, 1 for grey).
            image_size: image side in pixels (None: the preset's).
            patch_size: patch side in pixels; must divide image_size (None: the preset's).
            dim: token width (None: the preset's).
            depth: number of blocks (None: the preset's).
            heads: attention heads; must divide dim (None: the preset's).
            mlp_ratio: MLP hidden width over dim (None: the preset's).
            pool: 'cls' (class token) or 'avg' (mean of tokens) before the head (None: the preset's).
            drop_path: stochastic depth rate of the last block (linearly increasing from 0).
            dropout: dropout in attention and MLP.
            norm: the norm placed at the sites selected by placement (a registry name or mapping).
            placement: presets (all, attn, mlp, blocks, final) or globs selecting the sites that get norm.
            base_norm: the norm at every site not selected by placement.
            rules: {pattern: norm, ...} or [{pattern: norm}, ...], tried in order before placement; first match wins.
            alpha_init: alpha0 for every DyT-family site whose spec does not set its own.
            alpha_rule: alpha0 per site: constant (alpha_init), depth (alpha_init / sqrt(k), k the site's block),
                data (alpha_init / std of the site's input on the first training batch of a fresh run).
            convert: after building, swap norms for a registry norm, as ImageClassifier does ({to: dyt, sites: [norm]}).
            optimizer: optimizer class or callable taking parameter groups (AdamW by default).
            scheduler: learning-rate scheduler callable, stepped every optimizer step (warmup + cosine).
            label_smoothing: cross-entropy label smoothing.
            memory_format: how images, feature maps and conv weights are stored: channels_last (NHWC: oneDNN's
                faster convolutions on CPU, and what CUDA's tensor cores want) or contiguous (NCHW).
        """
        net = ViT(preset=preset, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                  patch_size=patch_size, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, pool=pool,
                  drop_path=drop_path, dropout=dropout, norm=norm, placement=placement, base_norm=base_norm,
                  rules=rules, alpha_init=alpha_init, alpha_rule=alpha_rule)
        super().__init__(net=net, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                         convert=convert, alpha_init=alpha_init, optimizer=optimizer, scheduler=scheduler,
                         label_smoothing=label_smoothing, memory_format=memory_format)


class ResNetClassifier(AlphaCalibration, ImageClassifier):
    """ImageClassifier around a dyt_lab ResNet; every ResNet argument is a model argument."""

    def __init__(
        self,
        preset: str = "resnet18",
        num_classes: int = 1000,
        in_channels: int = 3,
        block: Literal["basic", "bottleneck"] | None = None,
        layers: list[int] | None = None,
        widths: list[int] | None = None,
        stem: Literal["imagenet", "cifar"] | None = None,
        zero_init_residual: bool = False,
        norm: NormSpec | None = "batchnorm",
        placement: Placement = "all",
        base_norm: NormSpec = "batchnorm",
        rules: Rules | None = None,
        alpha_init: float | None = None,
        alpha_rule: AlphaRule | None = "constant",
        recipe: str | None = None,
        weight_standardization: bool | None = None,
        branch_gain: float | None = None,
        nf_alpha: float | None = None,
        agc: float | None = None,
        convert: NormConversion | None = None,
        image_size: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable = WarmupCosineLR,
        label_smoothing: float = 0.0,
        memory_format: MemoryFormat = "channels_last",
    ) -> None:
        """ImageClassifier around a dyt_lab ResNet; every ResNet argument is a model argument.

        Args:
            preset: architecture preset: resnet18, resnet34, resnet50, resnet20, resnet32, resnet56, resnet_tiny.
            num_classes: number of output classes.
            in_channels: image channels (3 for RGB, 1 for grey).
            block: 'basic' (two 3x3 convs) or 'bottleneck' (1x1, 3x3, 1x1 x4) (None: the preset's).
            layers: blocks per stage (None: the preset's).
            widths: channels per stage, before the bottleneck expansion (None: the preset's).
            stem: 'imagenet' (7x7/2 conv + max-pool) or 'cifar' (3x3 conv) (None: the preset's).
            zero_init_residual: start each block's last norm weight at zero, so blocks start as identity.
            norm: the norm placed at the sites selected by placement (a registry name or mapping) (None: the
                recipe's, or batchnorm).
            placement: presets (all, stem, downsample, stage1..4, first_in_block, last_in_block) or globs.
            base_norm: the norm at every site not selected by placement.
            rules: {pattern: norm, ...} or [{pattern: norm}, ...], tried in order before placement; first match wins.
            alpha_init: alpha0 for every DyT-family site whose spec does not set its own.
            alpha_rule: alpha0 per site: constant (alpha_init), depth (alpha_init / sqrt(k), k the site's block),
                data (alpha_init / std of the site's input on the first training batch of a fresh run) (None: the
                recipe's, or constant).
            recipe: a named bundle of these options (bn_free: weight_standardization, norm dyt_general centred per
                sample with a shift, alpha_rule data, alpha_init 0.16, found at lr 0.0105; nf_resnet:
                weight_standardization, nf_alpha 0.2, branch_gain 0, norm identity, agc 0.01); it sets each option it
                names that is left at its default or null, an option set otherwise wins. The run records the
                options it used, not the defaults the recipe replaced.
            weight_standardization: scaled weight standardisation of every conv, W = gain * (W - mean) / (std *
                sqrt(fan_in)) per output channel, learnable gain init 1 (NF-ResNets) (None: off, or the recipe's).
            branch_gain: a learnable scalar at the end of each residual branch, starting at this value (0: SkipInit,
                every block starts as relu(shortcut)) (None: no gain, or the recipe's).
            nf_alpha: NF-ResNets' signal propagation: block = relu(nf_alpha * branch(x / beta) + shortcut), beta the
                expected std of the block input, 1 after the stem and after each projection, growing as
                sqrt(beta^2 + nf_alpha^2) (0.2 in NF-ResNets) (None: off, or the recipe's).
            agc: lambda of unit-wise adaptive gradient clipping of every parameter but the head's (NF-Nets): adds
                dyt_lab.training.clipping.AdaptiveGradientClipping(agc) to the callbacks (None: off, or the recipe's).
            convert: after building, swap norms for a registry norm, as ImageClassifier does ({to: dyt, sites: [norm]}).
            image_size: image side in pixels (linked from the data module; None: unknown).
            optimizer: optimizer class or callable taking parameter groups (AdamW by default).
            scheduler: learning-rate scheduler callable, stepped every optimizer step (warmup + cosine).
            label_smoothing: cross-entropy label smoothing.
            memory_format: how images, feature maps and conv weights are stored: channels_last (NHWC: oneDNN's
                faster convolutions on CPU, and what CUDA's tensor cores want) or contiguous (NCHW).
        """
        net = ResNet(preset=preset, num_classes=num_classes, in_channels=in_channels, block=block, layers=layers,
                     widths=widths, stem=stem, zero_init_residual=zero_init_residual, norm=norm,
                     placement=placement, base_norm=base_norm, rules=rules, alpha_init=alpha_init, alpha_rule=alpha_rule,
                     recipe=recipe, weight_standardization=weight_standardization, branch_gain=branch_gain,
                     nf_alpha=nf_alpha, agc=agc)
        # What the recipe set, as values: hparams (checkpoints, hparams.yaml, the HParams tab) show the options
        # the run used, not the defaults it replaced; resolved again on a reload, they give the same model.
        used = resolve_recipe({"recipe": recipe, "norm": norm, "alpha_rule": alpha_rule, "alpha_init": alpha_init,
                               "weight_standardization": weight_standardization, "branch_gain": branch_gain,
                               "nf_alpha": nf_alpha, "agc": agc})
        super().__init__(net=net, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                         convert=convert, alpha_init=used["alpha_init"], optimizer=optimizer, scheduler=scheduler,
                         label_smoothing=label_smoothing, memory_format=memory_format)
        self.hparams.update(used)

    def configure_callbacks(self):
        """Adaptive gradient clipping where ``agc`` (or the recipe) asks for it; it replaces a user's AGC callback."""
        callbacks = list(super().configure_callbacks() or [])
        return callbacks + ([AdaptiveGradientClipping(self.net.agc)] if self.net.agc is not None else [])
