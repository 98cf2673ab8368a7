"""The LightningModules: ``ImageClassifier`` for any network, and the ViT/ResNet ones users pick by name.

``ImageClassifier`` takes a built ``net`` (dependency injection, as lightning-hydra-template does),
so a timm or torchvision model trains the same way (or a builder that names one, ``TimmModel``), and
``convert`` swaps that network's norms for a registry norm before the optimizer sees it.
``ViTClassifier`` and ``ResNetClassifier`` build a dyt_lab model from flat arguments, so
``--model.norm dyt --model.placement attn`` works on the command line. Their arguments are the
model's, declared once in ``dyt_lab/models/vit.py`` or ``resnet.py``, then ImageClassifier's:
``classifier_init`` gives them one signature and docstring, which ``--help``, YAML and a reader see.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from dyt_lab.errors import ConfigError
from dyt_lab.models import NetBuilder, ResNet, ViT, site_table, sites_of
from dyt_lab.models.resnet import resolve_recipe
from dyt_lab.norms import NormError
from dyt_lab.norms.convert import NormConversion
from dyt_lab.predictions import write_predictions
from dyt_lab.training.calibration import AlphaCalibration
from dyt_lab.training.checkpoints import MODEL_CLASS
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
        self.norm_sites = sites_of(net)
        try:
            self.converted = convert.apply(net, alpha_init) if convert is not None else []
        except NormError as err:  # a kind or site the network does not have, a norm that cannot go there
            raise ConfigError(f"--model.convert: {err}") from None
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
        # validate_args=False: training's per-step input checks cost a small model a measurable share of its step
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

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Which classifier saved it: a config of another one is refused by name before its weights are read.
        checkpoint[MODEL_CLASS] = type(self).__qualname__

    def configure_optimizers(self):
        optimizer = self.optimizer(parameter_groups(self.net))
        scheduler = self.scheduler(optimizer)
        if isinstance(scheduler, WarmupCosineLR) and scheduler.total_steps is None:
            scheduler.set_total_steps(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def argument_docs(function: Callable) -> dict[str, str]:
    """Each argument's entry (its first line and continuation lines) in ``function``'s Google-style ``Args:``."""
    entries: dict[str, str] = {}
    for line in (inspect.getdoc(function) or "").partition("Args:\n")[2].splitlines():
        if line.startswith(" " * 8) and entries:  # a continuation of the entry above
            entries[next(reversed(entries))] += "\n" + line
        elif line.startswith(" " * 4) and ":" in line:
            entries[line.split(":")[0].strip()] = line
        else:  # the next section
            break
    return entries


def classifier_init(net_class: type[nn.Module], resolve: Callable[[dict], dict] = dict) -> Callable[..., None]:
    """The ``__init__`` of an ImageClassifier around ``net_class``: the network's arguments, then ImageClassifier's.

    A model's arguments are declared once, in ``net_class.__init__`` (signature and docstring). This
    ``__init__`` takes them by name with ImageClassifier's (but ``net``), and its signature and docstring
    list them all, so jsonargparse offers ``--model.norm``, YAML keys and ``--help`` lines as for any
    written-out constructor. A name both take (num_classes, in_channels, image_size, alpha_init) goes to
    both, with the network's default. ``resolve`` rewrites the arguments, defaults filled in, before
    anything is built (a ResNet's recipe written in). ImageClassifier's ``save_hyperparameters`` records
    its own arguments; this adds every network argument as used, for checkpoints, hparams.yaml and the
    HParams tab. Made outside a class body, it calls ImageClassifier's ``__init__`` by name.
    """
    net_params = inspect.signature(net_class, eval_str=True).parameters
    own_params = {name: param for name, param in inspect.signature(ImageClassifier, eval_str=True).parameters.items()
                  if name != "net"}
    params = [*net_params.values(), *(param for name, param in own_params.items() if name not in net_params)]
    signature = inspect.Signature(params)

    def __init__(self, *args, **kwargs) -> None:
        bound = signature.bind(*args, **kwargs)  # an unknown name is a TypeError, as for any constructor
        bound.apply_defaults()
        arguments = resolve(bound.arguments)
        net_args = {name: arguments[name] for name in net_params}
        ImageClassifier.__init__(self, net=net_class(**net_args), **{name: arguments[name] for name in own_params})
        self.hparams.update(net_args)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    __init__.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])
    docs = {**argument_docs(ImageClassifier.__init__), **argument_docs(net_class.__init__)}  # the network's first
    name = net_class.__name__
    if undocumented := [param for param in signature.parameters if param not in docs]:  # --help would lack them
        raise TypeError(f"{name}.__init__'s docstring has no Args line for {', '.join(undocumented)}")
    __init__.__doc__ = (f"ImageClassifier around a dyt_lab {name}: {name}'s arguments, then ImageClassifier's.\n\n"
                        "Args:\n" + "\n".join(docs[param] for param in signature.parameters))
    return __init__


class ViTClassifier(AlphaCalibration, ImageClassifier):
    """ImageClassifier around a dyt_lab ViT; every ViT argument (``dyt_lab.models.ViT``) is a model argument."""

    __init__ = classifier_init(ViT)


class ResNetClassifier(AlphaCalibration, ImageClassifier):
    """ImageClassifier around a dyt_lab ResNet; every ResNet argument (``dyt_lab.models.ResNet``) is a model argument.

    A recipe is written into the arguments before anything is built or saved: hparams show the options
    the run used, not the defaults it replaced, and resolved again on a reload they give the same model.
    """

    __init__ = classifier_init(ResNet, resolve=resolve_recipe)

    def configure_callbacks(self):
        """Adaptive gradient clipping where ``agc`` (or the recipe) asks for it; it replaces a user's AGC callback."""
        callbacks = list(super().configure_callbacks() or [])
        return callbacks + ([AdaptiveGradientClipping(self.net.agc)] if self.net.agc is not None else [])
