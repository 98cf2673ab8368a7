"""Data modules: batches, splits, normalization, augmentation, and one-line errors for user mistakes."""

import ast
import functools
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from torch import nn
from torchvision.datasets import VisionDataset

from dyt_lab.data import (
    CIFAR10,
    CIFAR100,
    MNIST,
    Digits,
    FashionMNIST,
    ImageDataModule,
    ImageFolder,
    MNIST5k,
    stratified_split,
)
from dyt_lab.data.embedded import random_shift
from tests.helpers import ROOT, one_line_error

EMBEDDED = [(Digits, 8, (1437, 180, 180)), (MNIST5k, 28, (4000, 500, 500))]


@functools.cache
def ready(cls: type[ImageDataModule]) -> ImageDataModule:
    """A set-up instance with default arguments, loaded once per test process."""
    data = cls()
    data.setup("fit")
    return data


@pytest.mark.parametrize(("cls", "side", "sizes"), EMBEDDED)
def test_embedded_batches_and_attributes(cls, side, sizes):
    fresh = cls()  # the attributes LightningCLI links into the model exist before setup
    assert (fresh.num_classes, fresh.in_channels, fresh.image_size) == (10, 1, side)
    data = ready(cls)
    assert tuple(len(s) for s in (data.train_set, data.val_set, data.test_set)) == sizes
    assert sum(sizes) == cls.num_samples
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (64, 1, side, side) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() < 10
    val_images, _ = next(iter(data.val_dataloader()))
    assert val_images.shape[1:] == (1, side, side)


@pytest.mark.parametrize(("cls", "side", "sizes"), EMBEDDED)
def test_train_split_is_normalized(cls, side, sizes):
    images = ready(cls).train_set.tensors[0]  # (N, 1, side, side)
    assert abs(images.mean().item()) < 0.01
    assert abs(images.std().item() - 1) < 0.01


def test_hparams_record_every_constructor_argument(tmp_path):
    write_image_folder(tmp_path)
    for data in (Digits(split_seed=3), CIFAR10(data_dir="elsewhere"), ImageFolder(str(tmp_path))):
        assert set(data.hparams) == set(inspect.signature(type(data)).parameters)
    assert Digits(split_seed=3).hparams["split_seed"] == 3


def test_split_is_the_same_in_fresh_instances_whatever_the_global_seed():
    first = Digits()
    first.setup("fit")
    torch.manual_seed(123)
    np.random.seed(7)
    second = Digits()
    second.setup("fit")
    for a, b in zip(
        (first.train_set, first.val_set, first.test_set), (second.train_set, second.val_set, second.test_set)
    ):
        assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    other_seed = Digits(split_seed=1)
    other_seed.setup("fit")
    assert not torch.equal(first.val_set.tensors[1], other_seed.val_set.tensors[1])


def test_split_is_disjoint_complete_and_stratified():
    labels = np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])  # digits' counts
    train, val, test = stratified_split(labels, 0.1, 0.1, seed=0)
    assert (len(train), len(val), len(test)) == (1437, 180, 180)
    assert len(np.unique(np.concatenate([train, val, test]))) == len(labels)
    for part in (val, test):
        counts = np.bincount(labels[part], minlength=10)
        assert np.all(np.abs(counts - 0.1 * np.bincount(labels)) <= 1)
    assert np.array_equal(val, stratified_split(labels, 0.1, 0.1, seed=0)[1])
    _, val_only, no_test = stratified_split(labels, 0.2, 0.0, seed=0)
    assert len(val_only) == 359 and len(no_test) == 0


def test_one_epoch_of_digits_batches():
    # Speed is measured in benchmarks/, not asserted here; this checks the epoch's batching.
    batches = list(ready(Digits).train_dataloader())
    assert len(batches) == 23  # ceil(1437 / 64)
    assert sum(len(y) for _, y in batches) == 1437


def test_random_shift_moves_each_image_within_pad():
    images = torch.randn(16, 2, 8, 8)
    shifted = random_shift(images, pad=1)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate")
    windows = {(dy, dx): padded[..., dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)}
    for i in range(16):
        assert any(torch.equal(shifted[i], window[i]) for window in windows.values())
    assert not torch.equal(shifted, images)  # 16 draws of 9 offsets are not all (1, 1)


def test_augment_shifts_only_training_batches():
    data = Digits(augment=True, batch_size=1437)  # one batch: the whole train split, shuffled
    data.setup("fit")
    images, _ = next(iter(data.train_dataloader()))
    assert images.shape == (1437, 1, 8, 8)
    stored = {image.numpy().tobytes() for image in data.train_set.tensors[0]}
    unmoved = sum(image.numpy().tobytes() in stored for image in images)
    assert unmoved < 1437 / 2  # about 1 in 9 draws the offset (0, 0)
    val_images, _ = next(iter(data.val_dataloader()))
    assert torch.equal(val_images, data.val_set.tensors[0])


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": -4}, "batch_size must be a positive integer"),
        ({"num_workers": -1}, "num_workers must be an integer >= 0"),
        ({"val_fraction": 0.0}, "val_fraction must be a number strictly between 0 and 1"),
        ({"test_fraction": 1.5}, "test_fraction must be a number strictly between 0 and 1"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction=0.5 + test_fraction=0.5 >= 1"),
    ],
)
def test_bad_arguments_are_one_line_config_errors(kwargs, words):
    assert words in one_line_error(lambda: Digits(**kwargs))


def test_a_split_smaller_than_the_classes_is_a_config_error():
    data = Digits(val_fraction=0.002)  # 4 samples for 10 classes
    assert "cannot split 1797 samples" in one_line_error(data.setup, "fit")


@pytest.mark.parametrize(
    ("cls", "channels", "side", "classes"),
    [(CIFAR10, 3, 32, 10), (CIFAR100, 3, 32, 100), (MNIST, 1, 28, 10), (FashionMNIST, 1, 28, 10)],
)
def test_torchvision_sets_attributes_and_transforms(cls, channels, side, classes):
    data = cls()
    assert (data.num_classes, data.in_channels, data.image_size) == (classes, channels, side)
    assert len(data.mean) == len(data.std) == channels
    image = Image.new(
        "RGB" if channels == 3 else "L", (side, side), color=128 if channels == 1 else (128,) * 3
    )
    for train in (True, False):
        tensor = data.transform(train)(image)
        assert tensor.shape == (channels, side, side) and tensor.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(data.mean)) / torch.tensor(data.std)  # no crop padding in eval
    assert torch.allclose(data.transform(False)(image)[:, 0, 0], expected, atol=1e-5)


def test_offline_download_is_a_one_line_config_error(tmp_path):
    data = CIFAR10(data_dir=str(tmp_path / "cifar"), download=True)
    message = one_line_error(data.prepare_data)
    assert message.startswith(f"could not download CIFAR10 into {tmp_path / 'cifar'} (offline?): ")
    assert message.endswith("put the files in data_dir or use an offline data module: Digits, MNIST5k")


def test_missing_data_dir_without_download(tmp_path):
    missing = tmp_path / "nowhere"
    message = one_line_error(MNIST(data_dir=str(missing), download=False).prepare_data)
    assert f"data_dir {missing} does not exist" in message and "--data.data_dir" in message
    empty = MNIST(data_dir=str(tmp_path), download=False)
    empty.prepare_data()  # the folder exists; the files are looked for in setup
    assert f"MNIST not found in {tmp_path}" in one_line_error(empty.setup, "fit")


class TinyMNIST(VisionDataset):
    """Stands in for torchvision.datasets.MNIST: 200 train / 50 test grey 28x28 images, no files."""

    def __init__(self, root, train=True, transform=None, download=False):
        super().__init__(root, transform=transform)
        self.targets = [i % 10 for i in range(200 if train else 50)]

    def __getitem__(self, index):
        return self.transform(Image.new("L", (28, 28), color=int(index) % 256)), self.targets[index]

    def __len__(self):
        return len(self.targets)


class TinyMNISTModule(MNIST):
    """MNIST's data module over the stand-in data set."""

    dataset_cls = TinyMNIST


def test_torchvision_val_split_is_carved_from_train(tmp_path):
    data = TinyMNISTModule(data_dir=str(tmp_path), val_fraction=0.2, batch_size=16, num_workers=0)
    data.setup("fit")
    assert (len(data.train_set), len(data.val_set)) == (160, 40)
    assert not set(data.train_set.indices) & set(data.val_set.indices)
    assert np.bincount([data.val_set.dataset.targets[i] for i in data.val_set.indices]).tolist() == [4] * 10
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (16, 1, 28, 28) and labels.shape == (16,)
    data.setup("test")
    assert len(data.test_set) == 50


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=3) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_image_folder_classes_and_batches(tmp_path):
    data = ImageFolder(str(write_image_folder(tmp_path)), image_size=32, batch_size=4, num_workers=0)
    assert (data.num_classes, data.in_channels, data.image_size) == (2, 3, 32)
    assert data.classes == ["cat", "dog"]
    data.setup("fit")
    for loader in (data.train_dataloader(), data.val_dataloader(), data.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
        assert set(labels.tolist()) <= {0, 1}
    assert len(data.train_set) == len(data.val_set) == 6


def test_image_folder_errors(tmp_path):
    assert f"data_dir {tmp_path / 'none'} does not exist" in one_line_error(
        ImageFolder, str(tmp_path / "none")
    )
    (tmp_path / "val").mkdir()
    assert f"no train/ folder in {tmp_path}" in one_line_error(ImageFolder, str(tmp_path))
    other = write_image_folder(tmp_path / "other", per_class=1)
    (other / "val" / "dog").rename(other / "val" / "bird")
    assert "different class folders; 2 in only one" in one_line_error(ImageFolder, str(other))


class LinearClassifier(LightningModule):
    """The smallest model a Trainer can fit: flatten and one linear layer."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.log("val/loss", nn.functional.cross_entropy(self.net(images), labels))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_digits_trains_under_a_lightning_trainer():
    data = Digits()
    model = LinearClassifier(data.in_channels * data.image_size**2, data.num_classes)
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2 * 23
    assert trainer.callback_metrics["val/loss"] < 1.0  # chance is ln(10) = 2.3


def test_data_layer_imports_nothing_above_it():
    package = ROOT / "dyt_lab" / "data"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("dyt_lab.models", "dyt_lab.training", "dyt_lab.cli")), (
                    path,
                    name,
                )
