"""The LightningModules: ``ImageClassifier`` for any network, and the ViT/ResNet ones users pick by name.

``ImageClassifier`` takes a built ``net`` (dependency injection, as lightning-hydra-template does),
so a timm or torchvision model trains the same way. ``ViTClassifier`` and ``ResNetClassifier``
build a dyt_lab model from flat arguments, so ``--model.norm dyt --model.placement attn`` works
on the command line; their argument list is composed from the model's and ImageClassifier's
signatures (see ``_expose_net_arguments``) rather than written a second time.
"""

from __future__ import annotations

import inspect
import textwrap
import typing

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from dyt_lab.models import ResNet, ViT
from dyt_lab.training.schedule import WarmupCosineLR


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
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable = WarmupCosineLR,
        label_smoothing: float = 0.0,
    ) -> None:
        """Build the module.

        Args:
            net: the network, images (N, in_channels, image_size, image_size) -> logits (N, num_classes).
            num_classes: number of classes (linked from the data module).
            in_channels: image channels (linked from the data module; None: unknown).
            image_size: image side in pixels (linked from the data module; None: unknown).
            optimizer: optimizer class or callable taking parameter groups (AdamW by default).
            scheduler: learning-rate scheduler callable, stepped every optimizer step (warmup + cosine).
            label_smoothing: cross-entropy label smoothing.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["net"], logger=False)  # the CLI logs the full config instead
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.label_smoothing = label_smoothing
        if in_channels and image_size:  # lets Lightning's summary show input and output shapes
            self.example_input_array = torch.zeros(2, in_channels, image_size, image_size)
        top_k = min(5, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc_top5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints, so a resumed run keeps its best

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> logits ``(N, num_classes)``."""
        return self.net(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self._loss(logits, y)
        self.train_acc.update(logits.detach(), y)  # logged once per epoch, not per step: steps stay cheap
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/acc", self.train_acc.compute())  # torchmetrics syncs the counts across DDP ranks
        self.train_acc.reset()

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

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.test_acc_top5(logits, y)
        self.log("test/loss", self._loss(logits, y))
        self.log("test/acc", self.test_acc)
        self.log("test/acc_top5", self.test_acc_top5)

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


def _args_lines(function) -> list[str]:
    """The ``Args:`` entries of a Google-style docstring, dedented to the entry level."""
    doc = textwrap.dedent(inspect.getdoc(function) or "")
    _, _, args = doc.partition("Args:\n")
    return [line for line in textwrap.dedent(args).splitlines() if line.strip()]


def _expose_net_arguments(cls: type) -> type:
    """Class decorator: ``cls(**kwargs)`` advertises ``cls.net_class``'s arguments plus ImageClassifier's.

    jsonargparse and Lightning read constructor arguments from ``inspect.signature`` and their help
    from the docstring, so setting both on ``__init__`` exposes every model argument as a flat
    ``--model.<name>`` flag without restating the model's argument list here.
    """
    net_params = list(inspect.signature(cls.net_class).parameters.values())
    own = inspect.signature(ImageClassifier.__init__).parameters
    taken = {p.name for p in net_params}
    module_params = [p for name, p in own.items() if name not in ("self", "net") and name not in taken]
    # Evaluated annotations: the postponed (string) ones would not resolve in this module's globals.
    hints = {**typing.get_type_hints(ImageClassifier.__init__), **typing.get_type_hints(cls.net_class.__init__)}
    params = [own["self"]] + [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
        for p in net_params + module_params
    ]
    entries = _args_lines(cls.net_class.__init__) + [
        line for line in _args_lines(ImageClassifier.__init__)
        if line.split(":")[0].strip() not in taken | {"net"}
    ]

    def __init__(self, **kwargs) -> None:  # a function of its own per class, to carry its signature
        _NetClassifier.__init__(self, **kwargs)

    __init__.__signature__ = inspect.Signature(params)
    __init__.__doc__ = f"{cls.__doc__}\n\nArgs:\n" + "\n".join(f"    {line}" for line in entries)
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = __init__
    return cls


class _NetClassifier(ImageClassifier):
    """Builds ``net_class`` from the keyword arguments it accepts; the rest configure training."""

    net_class: type[nn.Module]

    def __init__(self, **kwargs) -> None:
        net_names = set(inspect.signature(self.net_class).parameters)
        module_names = set(inspect.signature(ImageClassifier.__init__).parameters) - {"self", "net"}
        unknown = set(kwargs) - net_names - module_names
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments: {', '.join(sorted(unknown))}")
        net = self.net_class(**{k: v for k, v in kwargs.items() if k in net_names})
        super().__init__(net=net, **{k: v for k, v in kwargs.items() if k in module_names})


@_expose_net_arguments
class ViTClassifier(_NetClassifier):
    """ImageClassifier around a dyt_lab ViT; every ViT argument is a model argument."""

    net_class = ViT


@_expose_net_arguments
class ResNetClassifier(_NetClassifier):
    """ImageClassifier around a dyt_lab ResNet; every ResNet argument is a model argument."""

    net_class = ResNet
