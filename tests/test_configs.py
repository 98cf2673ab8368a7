"""Every shipped run config trains for one batch on the CPU, as shipped or composed as the README composes it.

Data that would be downloaded (CIFAR-10/100, an ImageNet folder) or installed (Fashion-MNIST) is a
small synthetic stand-in of the same shape; the embedded sets (Digits, MNIST5k) are the real ones. GPU,
DDP and bf16 settings become one CPU process in float32: the configs' models, data modules and options
are what is checked, not the hardware.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset

from dyt_lab.data import CIFAR10, CIFAR100
from dyt_lab.runs import run_lightning
from tests.helpers import QUIET, ROOT

CONFIGS = ROOT / "configs"
# One CPU process in float32, one training and one validation batch; after the config, so it wins.
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
       "--trainer.precision=32-true", "--trainer.fast_dev_run=1", *QUIET]
# Model configs on an experiment of their family (a model config replaces its model, keeps its data).
ON = {"resnet": "experiments/resnet_bn_vs_dyt_digits.yaml", "vit": "quickstart.yaml",
      "timm": "quickstart.yaml"}  # as the README composes them
RUNS = [[str(path.relative_to(CONFIGS))] for path in sorted((CONFIGS / "experiments").glob("*.yaml"))]
RUNS += [["quickstart.yaml"]]
RUNS += [[next(ON[family] for family in ON if path.stem.startswith(family)), str(path.relative_to(CONFIGS))]
         for path in sorted((CONFIGS / "model").glob("*.yaml"))]
# Data and trainer configs on the quickstart (the trainer's GPU settings are checked as YAML keys only).
RUNS += [[ON["vit"], str(path.relative_to(CONFIGS))] for folder in ("data", "trainer")
         for path in sorted((CONFIGS / folder).glob("*.yaml"))]


class FakeCIFAR(Dataset):
    """torchvision's CIFAR-10/100 as the data module calls it: ten random 32x32 RGB images per class."""

    num_classes = 10

    def __init__(self, root: str, train: bool = True, transform=None, download: bool = False) -> None:
        n = 10 * self.num_classes
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # (N, H, W, C), as torchvision's
        self.targets = [i % self.num_classes for i in range(n)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.data[i])
        return (self.transform(image) if self.transform else image), self.targets[i]


class FakeCIFAR100(FakeCIFAR):
    num_classes = 100


def image_folder(root: Path) -> None:
    """train/ and val/ of two classes, two small RGB images each (the data module resizes them)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / split / label / f"{i}.png")


def fashion_mnist_files(root: Path, train: int = 4000, test: int = 20) -> None:
    """The four idx files of Fashion-MNIST (gzipped, as Debian's), of random 28x28 images: enough for a train_subset."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                            ("labels-idx1", np.arange(n, dtype=np.uint8) % 10)):
            header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb", compresslevel=1) as file:
                file.write(header + array.tobytes())


def stand_in(data_class: str, tmp_path: Path, monkeypatch) -> list[str]:
    """Flags (and patches) that give ``data_class`` a synthetic stand-in for data it would download or find installed."""
    if data_class in ("dyt_lab.data.CIFAR10", "dyt_lab.data.CIFAR100"):
        monkeypatch.setattr(CIFAR10, "dataset_cls", FakeCIFAR)
        monkeypatch.setattr(CIFAR100, "dataset_cls", FakeCIFAR100)
        return ["--data.init_args.num_workers=0", "--data.init_args.batch_size=8"]
    if data_class == "dyt_lab.data.ImageFolder":
        image_folder(tmp_path / "imagenet")
        # 32x32 crops: the ViT-B/16 of the config, on 4 patches instead of 196 (a step is 20x cheaper)
        return [f"--data.init_args.data_dir={tmp_path / 'imagenet'}", "--data.init_args.num_workers=0",
                "--data.init_args.batch_size=2", "--data.init_args.image_size=32"]
    if data_class == "dyt_lab.data.FashionMNIST":
        fashion_mnist_files(tmp_path)
        return [f"--data.init_args.data_dir={tmp_path}"]
    return []  # embedded in a package: the real data


@pytest.mark.parametrize("configs", RUNS, ids=["+".join(Path(c).stem for c in configs) for configs in RUNS])
def test_every_shipped_config_trains_one_batch(configs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative folders in a config (data, runs) land here
    data_class = next(section["data"]["class_path"] for section in
                      (yaml.safe_load((CONFIGS / c).read_text()) for c in reversed(configs)) if "data" in section)
    args = ["fit", *(f"--config={CONFIGS / c}" for c in configs), *CPU,
            *stand_in(data_class, tmp_path, monkeypatch), f"--trainer.logger.init_args.save_dir={tmp_path}"]
    cli = run_lightning(args)
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    model_config = next(yaml.safe_load((CONFIGS / c).read_text())["model"] for c in reversed(configs)
                        if "model" in yaml.safe_load((CONFIGS / c).read_text()))
    assert f"{type(cli.model).__module__.rpartition('.')[0]}.{type(cli.model).__name__}" == model_config["class_path"]
    for key, value in (model_config.get("init_args") or {}).items():  # each model argument the config sets arrives
        if isinstance(value, dict):  # a class's arguments or a mapping's keys: those the config sets
            given = value.get("init_args", value) if "class_path" in value else value
            saved = cli.model.hparams[key].get("init_args", {}) if "class_path" in value else cli.model.hparams[key]
            assert {k: saved[k] for k in given} == given, key
        else:
            assert cli.model.hparams[key] == value, key
