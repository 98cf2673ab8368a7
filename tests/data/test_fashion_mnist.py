"""Fashion-MNIST on the real files Debian's dataset-fashion-mnist installs: splits, subset, test set, a fit.

These tests need the package (`.ci/run` installs it); without it they fail, saying how to install it.
"""

import functools
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dyt_lab.data import FashionMNIST
from dyt_lab.data.fashion_mnist import DEBIAN_DIR, TEST_FILES, TRAIN_FILES, find_files, read_idx
from dyt_lab.runs import run_lightning
from tests.helpers import ROOT, one_line_error

EXPERIMENT = ROOT / "configs" / "experiments" / "bn_factors_fashion_mnist.yaml"


@pytest.fixture(autouse=True, scope="module")
def installed():
    """Fail loudly, with the fix, where the files are missing: a skip would hide an untested module."""
    if find_files(Path(DEBIAN_DIR)) is None:
        pytest.fail(f"no Fashion-MNIST files in {DEBIAN_DIR}: run `apt-get install dataset-fashion-mnist`")


@functools.cache
def raw(split: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split straight from the Debian files, for comparison."""
    return tuple(read_idx(Path(DEBIAN_DIR) / f"{name}.gz") for name in split)


@functools.cache
def ready(**kwargs) -> FashionMNIST:
    """A module set up for fit and test, loaded once per test process for each set of arguments."""
    data = FashionMNIST(**kwargs)
    data.setup("fit")
    data.setup("test")
    return data


def pixels(dataset) -> np.ndarray:
    """A TensorDataset's normalized images back as uint8 (N, 28, 28)."""
    images = dataset.tensors[0][:, 0] * FashionMNIST.std[0] + FashionMNIST.mean[0]
    return (images * 255).round().to(torch.uint8).numpy()


def test_the_real_files_split_into_train_val_and_the_official_test_set():
    images, labels = raw(TRAIN_FILES)
    assert images.shape == (60000, 28, 28) and np.bincount(labels).tolist() == [6000] * 10
    data = ready()
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 28)
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (54000, 6000, 10000)
    train_images, train_labels = data.train_set.tensors
    assert train_images.shape == (54000, 1, 28, 28) and train_images.dtype == torch.float32
    assert train_labels.dtype == torch.long and set(train_labels.tolist()) == set(range(10))
    # mean and std are the train set's own statistics: normalized, it sits at 0 and 1
    assert abs(train_images.mean().item()) < 0.01 and abs(train_images.std().item() - 1) < 0.01
    assert np.bincount(data.val_set.tensors[1].numpy()).tolist() == [600] * 10  # stratified
    assert not set(data.train_indices) & set(data.val_indices)
    assert np.array_equal(pixels(data.val_set), images[data.val_indices])
    test_images, test_labels = raw(TEST_FILES)
    assert np.array_equal(pixels(data.test_set), test_images)  # the 10000 t10k images, in file order
    assert np.array_equal(data.test_set.tensors[1].numpy(), test_labels)


def test_the_train_subset_is_balanced_seeded_and_apart_from_val():
    data = ready(train_subset=500, split_seed=3)
    assert len(data.train_set) == 500
    assert np.bincount(data.train_set.tensors[1].numpy()).tolist() == [50] * 10
    assert not set(data.train_indices) & set(data.val_indices)
    assert np.array_equal(pixels(data.train_set), raw(TRAIN_FILES)[0][data.train_indices])
    again = ready(train_subset=500, split_seed=3, batch_size=32)  # a fresh instance: the same images
    assert np.array_equal(again.train_indices, data.train_indices)
    assert np.array_equal(ready(split_seed=3).val_indices, data.val_indices)  # the subset leaves val alone
    other = ready(train_subset=500, split_seed=4)
    assert len(set(other.train_indices) & set(data.train_indices)) < 100  # another seed, another subset


def test_batches_plain_and_augmented():
    data = ready(train_subset=500, split_seed=3)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (128, 1, 28, 28) and labels.shape == (128,)
    shifted = FashionMNIST(train_subset=500, split_seed=3, augment=True, batch_size=500)
    shifted.setup("fit")
    torch.manual_seed(0)
    augmented, _ = next(iter(shifted.train_dataloader()))
    torch.manual_seed(0)
    shifted.augment = False
    plain, _ = next(iter(shifted.train_dataloader()))  # the same order: the sampler's seed is the run's
    assert augmented.shape == plain.shape and not torch.equal(augmented, plain)
    assert (augmented == plain).all(dim=(1, 2, 3)).float().mean() < 0.2  # most images moved


def test_the_torchvision_layout_and_uncompressed_files_read_the_same(tmp_path):
    folder = tmp_path / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for name in TRAIN_FILES:  # gzipped, as Debian ships them
        (folder / f"{name}.gz").symlink_to(Path(DEBIAN_DIR) / f"{name}.gz")
    for name in TEST_FILES:  # uncompressed, as torchvision leaves them after a download
        with gzip.open(Path(DEBIAN_DIR) / f"{name}.gz") as source, open(folder / name, "wb") as target:
            shutil.copyfileobj(source, target)
    data = FashionMNIST(data_dir=str(tmp_path))
    assert data.files["t10k-images-idx3-ubyte"] == folder.resolve() / "t10k-images-idx3-ubyte"
    data.setup("test")
    assert torch.equal(data.test_set.tensors[0], ready().test_set.tensors[0])


def test_a_folder_without_the_files_is_one_line_and_writes_nothing(tmp_path):
    message = one_line_error(FashionMNIST, data_dir=str(tmp_path))
    assert f"--data.data_dir {tmp_path.resolve()} holds no Fashion-MNIST files" in message
    assert "apt-get install dataset-fashion-mnist" in message and DEBIAN_DIR in message
    missing = tmp_path / "nowhere"
    assert str(missing.resolve()) in one_line_error(FashionMNIST, data_dir=str(missing))
    assert list(tmp_path.iterdir()) == []


def test_without_the_package_the_line_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr("dyt_lab.data.fashion_mnist.DEBIAN_DIR", str(tmp_path.resolve()))  # as if not installed
    message = one_line_error(FashionMNIST, data_dir=str(tmp_path))
    assert message.startswith(f"Fashion-MNIST is not installed: no files in {tmp_path.resolve()}; ")
    assert "run `apt-get install dataset-fashion-mnist` as root, or set --data.data_dir" in message


def test_a_truncated_file_is_one_line_naming_it(tmp_path):
    for name in (*TRAIN_FILES, *TEST_FILES):
        (tmp_path / f"{name}.gz").symlink_to(Path(DEBIAN_DIR) / f"{name}.gz")
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    labels.write_bytes((Path(DEBIAN_DIR) / labels.name).read_bytes()[:1000])
    data = FashionMNIST(data_dir=str(tmp_path))
    message = one_line_error(data.setup, "test")
    assert f"cannot read Fashion-MNIST file {labels.resolve()}" in message


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"train_subset": 9}, "train_subset must be an integer >= 10, got 9"),
        ({"train_subset": 54001}, "train_subset must be at most 54000 (the train split at val_fraction=0.1)"),
        ({"train_subset": 57001, "val_fraction": 0.05}, "at most 57000"),
    ],
)
def test_a_train_subset_out_of_range_is_refused_before_reading(kwargs, words):
    assert words in one_line_error(FashionMNIST, **kwargs)


@pytest.mark.slow
def test_the_experiment_fits_and_tests_on_the_real_files(tmp_path):
    cli = run_lightning([
        "fit", "--config", str(EXPERIMENT), "--trainer.fast_dev_run=2", "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--model.norm={name: factored, center: none, scale: alpha, squash: tanh}",  # DyT
    ])
    assert cli.trainer.state.finished and cli.trainer.global_step == 2
    assert cli.model.hparams.num_classes == 10 and cli.model.hparams.in_channels == 1  # linked from the data
    assert len(cli.datamodule.train_set) == 3500  # the experiment's subset
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    cli.trainer.test(cli.model, datamodule=cli.datamodule)
    assert 0 <= cli.trainer.callback_metrics["test/acc"] <= 1 and len(cli.datamodule.test_set) == 10000
