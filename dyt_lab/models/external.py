"""timm and torchvision models by the names their users know, and the norm sites of any network.

``TimmModel("resnet18")`` and ``TorchvisionModel("vit_b_16")`` are placeholders, not networks:
``ImageClassifier`` replaces one with ``build(num_classes, in_channels, image_size)``, given the values
the CLI links from the data module, so one config names only the model and trains on 8x8 digits as
on 28x28 MNIST (torch's Lazy modules likewise learn their shapes late). A name is checked when the
placeholder is made, so a typo fails before anything is built.

    --model.net dyt_lab.models.TimmModel --model.net.init_args.name resnet18
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import traceback
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from dyt_lab.errors import ConfigError
from dyt_lab.models.placement import format_placement, sites_of

# set from the data module by ImageClassifier; a builder's kwargs may not set them again
LINKED = {"timm": ("num_classes", "in_chans", "img_size"), "torchvision": ("num_classes", "image_size")}
UNEXPECTED = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")
NAME_IT = ("a timm or torchvision model can be named instead: --model.net dyt_lab.models.TimmModel "
           "--model.net.init_args.name NAME (or TorchvisionModel)")


class NetBuilder(nn.Module, ABC):
    """A network to build once the data module has said its classes, channels and image size.

    It is an ``nn.Module`` only so that ``ImageClassifier.net`` keeps the one type ``nn.Module``:
    with a Union there, jsonargparse reports a failed build through the first type it tried, and
    the real cause (a typo in a timm name, a timm argument) is lost from the error.
    """

    library: str
    name: str
    kwargs: dict[str, Any]

    @abstractmethod
    def _create(self, num_classes: int, in_channels: int | None, size: dict[str, int]) -> nn.Module:
        """The library's model; ``size`` holds the image-size argument (empty if the model takes none)."""

    @abstractmethod
    def _module(self) -> str:
        """The module that defines this model's class, for naming its arguments in an error."""

    def forward(self, *args: Any) -> torch.Tensor:
        raise RuntimeError(f"{type(self).__name__} is a placeholder: call build(num_classes, in_channels, "
                           "image_size) for the network, or give it to ImageClassifier as net")

    def config(self) -> dict[str, Any]:
        """This placeholder as the config that makes it (class_path, init_args), for the run's hyperparameters."""
        cls, module = type(self), type(self).__module__
        package = module.rpartition(".")[0]
        if getattr(importlib.import_module(package), cls.__name__, None) is cls:  # the path users write
            module = package
        init_args = {"name": self.name, "kwargs": self.kwargs or None}
        return {"class_path": f"{module}.{cls.__name__}", "init_args": init_args}

    def build(self, num_classes: int, in_channels: int | None = None, image_size: int | None = None) -> nn.Module:
        """The network for ``num_classes`` classes of ``in_channels`` x ``image_size``^2 images, run once to check."""
        size = {LINKED[self.library][-1]: image_size} if image_size else {}
        try:
            try:
                net = self._create(num_classes, in_channels, size)
            except TypeError as err:  # the builders do not say which models take an image size: ResNets do not
                if not size or f"'{next(iter(size))}'" not in str(err):
                    raise
                net = self._create(num_classes, in_channels, {})
        except Exception as err:  # a wrong kwarg, or a value the model cannot take: one line naming it
            if isinstance(err, ConfigError) or not self.kwargs:  # no kwargs of the user's: a bug, keep its traceback
                raise
            raise self._refused(err) from err
        if in_channels and image_size:
            self._check_forward(net, in_channels, image_size)
        return net

    def _refused(self, err: Exception) -> ConfigError:
        """One line for an error the library raised while building: the argument, the value, what is valid."""
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        unexpected = UNEXPECTED.search(first)
        owner = unexpected and getattr(importlib.import_module(self._module()), unexpected.group(1), None)
        if owner is not None:
            arg, names = unexpected.group(2), list(inspect.signature(owner).parameters)
            close = difflib.get_close_matches(arg, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"its arguments: {', '.join(names)}"
            return ConfigError(f"--model.net.init_args.kwargs: {self.library} model '{self.name}' "
                               f"({owner.__name__}) has no argument '{arg}'; {hint}")
        hint = ""
        if any("norm" in key for key in self.kwargs):  # the libraries know only their own norm names
            hint = "; to put a registry norm (dyt, ...) in, leave the norm argument out and use --model.convert"
        return ConfigError(f"--model.net.init_args.kwargs {self.kwargs}: {self.library} cannot build "
                           f"'{self.name}' with them: {type(err).__name__}: {first}{hint}")

    def _check_forward(self, net: nn.Module, in_channels: int, image_size: int) -> None:
        """Run one image through ``net``: an image the model cannot take is one line now, not a traceback later."""
        was_training = net.training
        try:
            with torch.no_grad():
                net.eval()(torch.zeros(1, in_channels, image_size, image_size))
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            shape = f"{in_channels}x{image_size}x{image_size}"
            raise ConfigError(f"{self.library} model '{self.name}' cannot take the data's {shape} images: {first}; "
                              "set --model.net.init_args.kwargs (e.g. {patch_size: 2} for a ViT) or choose another "
                              "model") from err
        finally:
            net.train(was_training)

    def _check_kwargs(self, kwargs: dict[str, Any] | None) -> dict[str, Any]:
        kwargs = dict(kwargs or {})
        for key in LINKED[self.library]:
            if key in kwargs:
                raise ConfigError(f"--model.net.init_args.kwargs: '{key}' is set from the data module; "
                                  "leave it out")
        return kwargs


def _library(name: str):
    """``timm`` or ``torchvision``, imported when first used (timm is optional), or one line on how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(f"--model.net: {name} is not installed; pip install {name}") from None


def _unknown(library: str, name: str, names: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return ConfigError(f"--model.net.init_args.name: unknown {library} model '{name}'{hint}; "
                       f"{library}.models.list_models() lists all {len(names)}")


class TimmModel(NetBuilder):
    """A timm model by name, built with ``timm.create_model`` (no pretrained weights)."""

    library = "timm"

    def __init__(self, name: str, kwargs: dict[str, Any] | None = None) -> None:
        """Check the name now; build later, when ImageClassifier knows the data.

        Args:
            name: a timm model name, as timm.list_models() gives it (resnet18, vit_tiny_patch16_224, ...).
            kwargs: more keyword arguments for timm.create_model (patch_size, drop_path_rate, ...); num_classes,
                in_chans and img_size come from the data module.
        """
        super().__init__()
        timm = _library("timm")
        if not timm.is_model(name):
            raise _unknown("timm", name, timm.list_models())
        self.name = name
        self.kwargs = self._check_kwargs(kwargs)

    def _module(self) -> str:
        from timm.models import model_entrypoint, split_model_name_tag

        return model_entrypoint(split_model_name_tag(self.name)[0]).__module__

    def _create(self, num_classes: int, in_channels: int | None, size: dict[str, int]) -> nn.Module:
        timm = _library("timm")
        channels = {"in_chans": in_channels} if in_channels else {}
        return timm.create_model(self.name, num_classes=num_classes, **channels, **size, **self.kwargs)


class TorchvisionModel(NetBuilder):
    """A torchvision model by name, built with ``torchvision.models.get_model`` (no weights).

    torchvision's models take 3-channel images; for other data the first 3-channel convolution
    (the stem, first in every torchvision classifier) is rebuilt, untrained, for the data's channels.
    """

    library = "torchvision"

    def __init__(self, name: str, kwargs: dict[str, Any] | None = None) -> None:
        """Check the name now; build later, when ImageClassifier knows the data.

        Args:
            name: a torchvision model name, as torchvision.models.list_models() gives it (resnet18, vit_b_16).
            kwargs: more keyword arguments for the model's builder (dropout, ...); num_classes and image_size
                come from the data module.
        """
        super().__init__()
        torchvision = _library("torchvision")
        names = torchvision.models.list_models()
        if name not in names:
            raise _unknown("torchvision", name, names)
        self.name = name
        self.kwargs = self._check_kwargs(kwargs)

    def _module(self) -> str:
        return _library("torchvision").models.get_model_builder(self.name).__module__

    def _create(self, num_classes: int, in_channels: int | None, size: dict[str, int]) -> nn.Module:
        torchvision = _library("torchvision")
        net = torchvision.models.get_model(self.name, weights=None, num_classes=num_classes, **size,
                                           **self.kwargs)
        if in_channels and in_channels != 3:
            _adapt_stem(net, in_channels, self.name)
        return net


def _adapt_stem(net: nn.Module, in_channels: int, name: str) -> None:
    """Rebuild ``net``'s first 3-channel Conv2d for ``in_channels`` channels, keeping its other settings."""
    for site, conv in net.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            parent, _, child = site.rpartition(".")
            setattr(net.get_submodule(parent), child, nn.Conv2d(
                in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode))
            return
    raise ConfigError(f"torchvision model '{name}' has no 3-channel input convolution to adapt to the data's "
                      f"{in_channels} channels; use a timm model (it takes in_chans) or 3-channel data")


def site_table(net: nn.Module, sites: dict[str, str] | None = None) -> str | None:
    """``format_placement``'s site -> layout -> norm table, for any network; None if it has no norm.

    ``sites`` (site -> layout) defaults to ``sites_of(net)``.
    """
    sites = sites_of(net) if sites is None else sites
    if not sites:
        return None
    # format_placement reads a model's norm_sites() and the module at each: give it exactly those two
    return format_placement(SimpleNamespace(norm_sites=lambda: dict(sites), get_submodule=net.get_submodule))


def net_build_failure(net_config: Mapping | None, err: BaseException) -> ConfigError | None:
    """One line for an injected network class (``--model.net X``) whose constructor raised ``err``, else None.

    jsonargparse builds the class before the model and wraps what it raised; the innermost error is
    the library's own (timm's KeyError for ``norm_layer: dyt_lab.norms.DyT``, a norm name it does not know).
    It is the class's failure if the class's own source file is among the frames it was raised from.
    """
    if not isinstance(net_config, Mapping) or not isinstance(net_config.get("class_path"), str):
        return None
    class_path = net_config["class_path"]
    inner, seen = err, {id(err)}
    while (inner.__cause__ or inner.__context__) is not None and id(inner.__cause__ or inner.__context__) not in seen:
        inner = inner.__cause__ or inner.__context__
        seen.add(id(inner))
    try:
        module, _, name = class_path.rpartition(".")
        source = inspect.getsourcefile(getattr(importlib.import_module(module), name))
    except Exception:  # not importable: jsonargparse has said so while parsing
        return None
    if source is None or all(frame.filename != source for frame in traceback.extract_tb(inner.__traceback__)):
        return None  # raised elsewhere: not the class's own doing
    first = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    given = net_config.get("init_args") or {}
    norms = [key for key, value in given.items() if "norm" in key and isinstance(value, str) and "." in value]
    hint = (f"{name} takes its library's own norm names in {norms[0]}: leave it out and put a registry norm in "
            "with --model.convert '{to: dyt}'") if norms else NAME_IT
    return ConfigError(f"--model.net {class_path} could not be built: {type(inner).__name__}: {first}; {hint}")
