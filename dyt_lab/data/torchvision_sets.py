"""torchvision's CIFAR-10/100 and MNIST: download once, val carved from train, official test.

Fashion-MNIST, a subclass that reads Debian's files offline, lives in fashion_mnist.py.

Augmentation (``augment``, on by default): CIFAR takes the usual random 32x32 crop of the image
padded by 4 plus a horizontal flip; MNIST takes only a random 28x28 crop of the
image padded by 2 (flipping changes what a digit is, and digits are centred). Normalization
uses the standard per-channel statistics of each train set.
"""

import shutil
from pathlib import Path

import torch
import torchvision
from torch.utils.data import Subset
from torchvision.datasets import VisionDataset
from torchvision.transforms import v2

from dyt_lab.data.base import OFFLINE_MODULES, ImageDataModule, check_fractions, stratified_split
from dyt_lab.errors import ConfigError


def short_reason(err: BaseException) -> str:
    """The useful last line of an exception's message (torchvision's download errors span lines)."""
    reason = getattr(err, "reason", None) or err  # URLError keeps the socket error in .reason
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


class TorchvisionDataModule(ImageDataModule):
    """A torchvision data set: a seeded stratified val split of its train set, and its official test set."""

    dataset_cls: type[VisionDataset]
    crop_padding: int  # pixels of padding around the image before the random crop
    flip: bool  # whether a horizontal flip keeps the class

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: bool = True,
        batch_size: int = 128,
        num_workers: int = 4,
        pin_memory: bool | None = None,
    ) -> None:
        """Check the arguments; files are fetched in ``prepare_data`` and read in ``setup``.

        Args:
            data_dir: Folder holding (or receiving) the data set's files.
            download: Download the files into data_dir when they are not there yet.
            val_fraction: Share of the official train set held out for validation, stratified by class.
            split_seed: Seed of the train/val split; the same seed gives the same split everywhere.
            augment: Random crop (and flip for CIFAR) of training images.
            batch_size: Samples per batch (per device under DDP).
            num_workers: DataLoader worker processes decoding and transforming images.
            pin_memory: Pin host memory for faster copies to the GPU; None pins only when CUDA is available.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        check_fractions(val_fraction=val_fraction)
        self.data_dir = data_dir
        self.download = download
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.augment = augment

    @property
    def _name(self) -> str:
        return self.dataset_cls.__name__

    def transform(self, train: bool) -> v2.Compose:
        """PIL image -> normalized float tensor (C, H, W); random crop and flip only for training."""
        steps: list[v2.Transform] = [v2.ToImage()]  # uint8 tensor: the crops below are faster on it
        if train and self.augment:
            steps.append(v2.RandomCrop(self.image_size, padding=self.crop_padding))
            if self.flip:
                steps.append(v2.RandomHorizontalFlip())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose(steps)

    def prepare_data(self) -> None:
        """Download the files (once, on one process per node), or check that data_dir exists."""
        root = Path(self.data_dir).expanduser().resolve()
        if not self.download:
            if not root.is_dir():
                raise ConfigError(
                    f"data_dir {root} does not exist: set --data.data_dir to the folder holding "
                    f"{self._name}, set --data.download true, or use an offline data module: "
                    f"{OFFLINE_MODULES}"
                )
            return
        created = not root.exists()
        for train in (True, False):
            try:
                self.dataset_cls(str(root), train=train, download=True)
            except (OSError, RuntimeError) as err:  # URLError is an OSError; MNIST wraps it in RuntimeError
                if created:  # a folder of this download's own, holding at most a partial archive
                    shutil.rmtree(root, ignore_errors=True)
                raise ConfigError(
                    f"could not download {self._name} into {root} (offline?): {short_reason(err)}; "
                    f"put the files in data_dir or use an offline data module: {OFFLINE_MODULES}"
                ) from None

    def _dataset(self, train: bool, transform: v2.Compose) -> VisionDataset:
        try:
            return self.dataset_cls(self.data_dir, train=train, transform=transform)
        except RuntimeError as err:  # "Dataset not found or corrupted. You can use download=True ..."
            root = Path(self.data_dir).expanduser().resolve()
            raise ConfigError(
                f"{self._name} not found in {root} ({short_reason(err)}): set --data.data_dir, "
                f"set --data.download true, or use an offline data module: {OFFLINE_MODULES}"
            ) from None

    def setup(self, stage: str) -> None:
        """Read the train set twice (augmented for training, plain for validation) and the test set."""
        if stage in ("fit", "validate") and self.train_set is None:
            train_full = self._dataset(train=True, transform=self.transform(train=True))
            val_full = self._dataset(train=True, transform=self.transform(train=False))
            train_idx, val_idx, _ = stratified_split(
                train_full.targets, self.val_fraction, 0.0, self.split_seed
            )
            self.train_set, self.val_set = Subset(train_full, train_idx), Subset(val_full, val_idx)
        if stage in ("test", "predict") and self.test_set is None:
            self.test_set = self._dataset(train=False, transform=self.transform(train=False))


class CIFAR10(TorchvisionDataModule):
    """CIFAR-10: 60000 colour 32x32 images in 10 classes; 45000 train / 5000 val / 10000 test by default."""

    dataset_cls = torchvision.datasets.CIFAR10
    num_classes = 10
    in_channels = 3
    image_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    crop_padding = 4
    flip = True


class CIFAR100(TorchvisionDataModule):
    """CIFAR-100: 60000 colour 32x32 images in 100 classes; 45000 train / 5000 val / 10000 test by default."""

    dataset_cls = torchvision.datasets.CIFAR100
    num_classes = 100
    in_channels = 3
    image_size = 32
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    crop_padding = 4
    flip = True


class MNIST(TorchvisionDataModule):
    """MNIST: 70000 grey 28x28 digits in 10 classes; 54000 train / 6000 val / 10000 test by default."""

    dataset_cls = torchvision.datasets.MNIST
    num_classes = 10
    in_channels = 1
    image_size = 28
    mean = (0.1307,)
    std = (0.3081,)
    crop_padding = 2
    flip = False

