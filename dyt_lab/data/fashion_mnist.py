"""Fashion-MNIST offline: the files Debian's ``dataset-fashion-mnist`` installs, read into memory.

``apt-get install dataset-fashion-mnist`` puts torchvision's four raw files, gzipped, under
/usr/share/datasets/fashion-mnist. Debian recompressed them, so torchvision's md5 check fails and
``torchvision.datasets.FashionMNIST(download=True)`` goes to the network; this module reads the idx
files itself (gzipped or not, so torchvision's ``<data_dir>/FashionMNIST/raw`` layout works too),
writes nothing, and never downloads unless asked.

Like MNIST5k, the images live in memory as normalized float tensors (a 4000-image subset is 12 MB,
all 60000 are 190 MB): an epoch costs the model's steps and nothing else. The validation split is
carved from the official train set (stratified, ``split_seed``) and the test set is the official 10000
test images, so val/acc never reads the data that reports give as held-out test accuracy.
``train_subset`` trains on a stratified, seeded subset of the train split, the same on every run.
"""

import gzip
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

from dyt_lab.data.base import TensorBatches, stratified_split
from dyt_lab.data.embedded import shift_collate
from dyt_lab.data.torchvision_sets import TorchvisionDataModule
from dyt_lab.errors import ConfigError, check_int

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL = "apt-get install dataset-fashion-mnist"
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TRAIN_SIZE = 60000  # images in the official train set; bounds train_subset before anything is read


def find_files(root: Path) -> dict[str, Path] | None:
    """The four files by name, in ``root`` or its ``FashionMNIST/raw`` (gzipped or not); else None."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        found = {}
        for name in (*TRAIN_FILES, *TEST_FILES):
            path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
            if path is None:
                break
            found[name] = path
        else:
            return found
    return None


def read_idx(path: Path) -> np.ndarray:
    """The array in an idx file of unsigned bytes (MNIST's format), gzipped or not, in its stored shape."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            data = file.read()
        # Header: two zero bytes, the element type (0x08: unsigned byte), the number of dimensions,
        # then each dimension's size as a big-endian int32; the elements follow.
        if data[:3] != b"\x00\x00\x08" or len(data) < 4:
            raise ValueError("not an idx file of unsigned bytes")
        ndim = data[3]
        shape = np.frombuffer(data, dtype=">i4", count=ndim, offset=4).astype(int)
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, ValueError) as err:  # a truncated gzip is an EOFError, a bad one an OSError
        raise ConfigError(f"cannot read Fashion-MNIST file {path}: {err}; reinstall it ({INSTALL})") from None


def read_split(files: dict[str, Path], names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) of one split, checked against each other."""
    images, labels = (read_idx(files[name]) for name in names)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or labels.max() > 9:
        raise ConfigError(
            f"{files[names[0]]} and {files[names[1]]} do not hold one label in 0..9 per image "
            f"(shapes {images.shape} and {labels.shape}); reinstall them ({INSTALL})"
        )
    return images, labels


class FashionMNIST(TorchvisionDataModule):
    """Fashion-MNIST, read offline: 70000 grey 28x28 clothes, 10 classes; 54000 / 6000 / 10000 by default."""

    dataset_cls = torchvision.datasets.FashionMNIST  # only to download, when download=True
    num_classes = 10
    in_channels = 1
    image_size = 28
    mean = (0.2860,)
    std = (0.3530,)
    crop_padding = 2
    flip = False

    def __init__(
        self,
        data_dir: str = DEBIAN_DIR,
        download: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        train_subset: int | None = None,
        augment: bool = True,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        """Check the arguments and find the files now: a wrong folder fails before any run or trial starts.

        Args:
            data_dir: Folder holding the four idx files (gzipped or not), directly or under
                FashionMNIST/raw; by default where Debian's dataset-fashion-mnist installs them.
            download: Download the missing files into data_dir with torchvision (needs the internet).
            val_fraction: Share of the official train set held out for validation, stratified by class.
            split_seed: Seed of the train/val split and of train_subset; one seed, the same images everywhere.
            train_subset: Train on this many images of the train split, stratified by class; None: all.
            augment: Shift each training image by a random offset of up to 2 pixels.
            batch_size: Samples per batch (per device under DDP).
            num_workers: DataLoader worker processes; 0 (the default) is fastest for in-memory tensors.
            pin_memory: Pin host memory for faster copies to the GPU; None pins only when CUDA is available.
        """
        super().__init__(
            data_dir, download, val_fraction, split_seed, augment, batch_size, num_workers, pin_memory
        )
        if train_subset is not None:
            check_int("data train_subset", train_subset, self.num_classes)  # one image per class at least
            available = TRAIN_SIZE - round(val_fraction * TRAIN_SIZE)
            if train_subset > available:
                raise ConfigError(
                    f"data train_subset must be at most {available} (the train split at val_fraction="
                    f"{val_fraction}), got {train_subset}"
                )
        self.train_subset = train_subset
        self.root = Path(data_dir).expanduser().resolve()
        self.files = None if download else self.locate()
        self.train_indices: np.ndarray | None = None  # positions in the official train set, once set up
        self.val_indices: np.ndarray | None = None

    def locate(self) -> dict[str, Path]:
        """The four files in data_dir, or a one-line ConfigError saying how to get them."""
        files = find_files(self.root)
        if files is not None:
            return files
        if str(self.root) == DEBIAN_DIR:
            raise ConfigError(
                f"Fashion-MNIST is not installed: no files in {DEBIAN_DIR}; run `{INSTALL}` as root, "
                "or set --data.data_dir to a folder holding its four idx files"
            )
        raise ConfigError(
            f"--data.data_dir {self.root} holds no Fashion-MNIST files (train-images-idx3-ubyte[.gz] and "
            f"3 more, there or in FashionMNIST/raw): set it to such a folder, or to {DEBIAN_DIR} "
            f"(the default) after `{INSTALL}`"
        )

    def prepare_data(self) -> None:
        """Download the files with torchvision only when asked to and they are not there yet."""
        if self.download and find_files(self.root) is None:
            super().prepare_data()

    def tensors(self, images: np.ndarray, labels: np.ndarray) -> TensorBatches:
        """Normalized images (N, 1, 28, 28) float32 and labels (N,) int64, as a dataset."""
        # torch.tensor copies out of the read-only buffer np.frombuffer returned.
        pixels = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255
        normalized = (pixels - self.mean[0]) / self.std[0]
        return TensorBatches(normalized, torch.tensor(labels, dtype=torch.long))

    def setup(self, stage: str) -> None:
        """Read the train set (train / val split, then subset) for fit and validate, else the test set."""
        files = self.files or self.locate()  # after a download the files exist only now
        if stage in ("fit", "validate") and self.train_set is None:
            images, labels = read_split(files, TRAIN_FILES)
            train_idx, val_idx, _ = stratified_split(labels, self.val_fraction, 0.0, self.split_seed)
            if self.train_subset is not None and self.train_subset < len(train_idx):
                # As in stratified_split: sklearn's own RandomState(seed), the same subset on every process.
                from sklearn.model_selection import train_test_split

                train_idx, _ = train_test_split(
                    train_idx, train_size=self.train_subset, stratify=labels[train_idx],
                    random_state=self.split_seed,
                )
            self.train_indices, self.val_indices = train_idx, val_idx
            self.train_set = self.tensors(images[train_idx], labels[train_idx])
            self.val_set = self.tensors(images[val_idx], labels[val_idx])
        if stage in ("test", "predict") and self.test_set is None:
            self.test_set = self.tensors(*read_split(files, TEST_FILES))

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of the train split, randomly shifted when ``augment`` is on."""
        collate = partial(shift_collate, pad=self.crop_padding) if self.augment else None
        return self._loader(self.train_set, shuffle=True, collate_fn=collate)
