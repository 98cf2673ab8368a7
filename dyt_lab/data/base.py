"""What every data module shares: batching arguments, the four dataloaders and a seeded stratified split.

Concrete modules only say which data set, which transforms, and fill ``train_set`` / ``val_set`` /
``test_set`` in ``setup``. ``num_classes``, ``in_channels`` and ``image_size`` exist right after
``__init__`` because LightningCLI links them into the model when both are instantiated.
"""

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from dyt_lab.errors import ConfigError, check_int

OFFLINE_MODULES = "Digits, MNIST5k"  # named in error messages as the way out when data is missing


class TensorBatches(TensorDataset):
    """Tensors held in memory, served a batch at a time: one index per tensor, not one lookup per sample.

    The DataLoader hands a batch's indices to ``__getitems__`` (torch's hook for batched fetching),
    so its collate step receives ``[images (B, ...), labels (B,)]`` already stacked. Per-sample
    lookups and ``default_collate`` took 4% of an MNIST5k testbed epoch (cProfile). Same samples,
    same order, same values.
    """

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        index = torch.as_tensor(indices)
        return [tensor[index] for tensor in self.tensors]


def keep_batch(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """The collate step of a ``TensorBatches`` loader: the batch is stacked already."""
    return batch


def check_fractions(**fractions: float) -> None:
    """Raise a one-line ConfigError unless every fraction lies in (0, 1) and they sum to less than 1."""
    for name, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ConfigError(f"data {name} must be a number strictly between 0 and 1, got {value!r}")
    if sum(fractions.values()) >= 1:
        given = " + ".join(f"{name}={value}" for name, value in fractions.items())
        raise ConfigError(f"data split fractions must leave samples to train on: {given} >= 1")


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test indices of a seeded split keeping each class's share; the same on every process.

    ``test_fraction`` may be 0 (the data set has an official test set). Sizes are rounded fractions
    of the whole set, so Digits (1797) splits 1437 / 180 / 180 at 0.1 / 0.1.
    """
    # sklearn draws from its own RandomState(seed): no global RNG is touched, so every DDP rank
    # and every fresh instance gets exactly the same indices.
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    indices = np.arange(len(labels))
    n_val, n_test = round(val_fraction * len(labels)), round(test_fraction * len(labels))
    try:
        rest, test = indices, indices[:0]
        if n_test:
            rest, test = train_test_split(indices, test_size=n_test, stratify=labels, random_state=seed)
        train, val = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=seed)
    except ValueError as err:  # a split smaller than the number of classes
        raise ConfigError(
            f"cannot split {len(labels)} samples into train/val/test with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}: {err}"
        ) from None
    return train, val, test


class EpochShuffleSampler(Sampler[int]):
    """A random order that depends only on the run's seed and the epoch, not on the RNG's history.

    Lightning calls ``set_epoch`` before each epoch. The order of epoch ``e`` is drawn from a
    generator seeded with ``torch.initial_seed() + e`` (the seed ``seed_everything`` set), so a
    run resumed from a checkpoint sees exactly the batches the uninterrupted run would have seen;
    a ``RandomSampler`` would draw from the global RNG, whose state checkpoints do not keep.
    """

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.seed = torch.initial_seed()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class ImageDataModule(LightningDataModule):
    """Base of the image classification data modules: batching arguments and the four dataloaders."""

    num_classes: int
    in_channels: int
    image_size: int  # side in pixels of the (square) images the model receives, after transforms
    mean: tuple[float, ...]  # per-channel normalization statistics, in [0, 1] pixel units
    std: tuple[float, ...]

    def __init__(self, batch_size: int = 64, num_workers: int = 0, pin_memory: bool | None = None) -> None:
        """Store the batching arguments.

        Args:
            batch_size: Samples per batch (per device under DDP).
            num_workers: DataLoader worker processes; 0 loads in the main process.
            pin_memory: Pin host memory for faster copies to the GPU; None pins only when CUDA is available.
        """
        super().__init__()
        check_int("data batch_size", batch_size, 1)
        check_int("data num_workers", num_workers, 0)
        # Records the concrete module's constructor arguments too (Lightning walks up the __init__
        # frames): they go into checkpoints and the run's hyperparameters.
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, shuffle: bool = False, collate_fn=None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its dataloaders are asked for")
        # Under DDP Lightning wraps the sampler in a DistributedSampler, which shards and reshuffles it.
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset)) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn or (keep_batch if isinstance(dataset, TensorBatches) else None),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the train split."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Batches of the validation split, in a fixed order."""
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        """Batches of the test split, in a fixed order."""
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        """Batches of the test split: predictions are made on held-out data."""
        return self._loader(self.test_set)
