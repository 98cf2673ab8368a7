"""ImageNet-style folders of images: ``data_dir/train/<class>/*.jpg`` and ``data_dir/val/<class>/*.jpg``.

Transforms follow the torchvision ImageNet recipe: RandomResizedCrop + horizontal flip for training;
resize the short side to ``image_size / 0.875`` and centre-crop ``image_size`` for validation and
test (both use the val folder, as ImageNet's test labels are not public).
"""

from pathlib import Path

import torch
from torchvision import datasets
from torchvision.transforms import v2

from dyt_lab.data.base import OFFLINE_MODULES, ImageDataModule
from dyt_lab.errors import ConfigError, check_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def class_names(folder: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``folder``; a one-line ConfigError if it has none."""
    try:
        classes, _ = datasets.folder.find_classes(str(folder))
    except FileNotFoundError:
        raise ConfigError(f"no class folders in {folder}: expected {folder}/<class>/<image files>") from None
    return classes


class ImageFolder(ImageDataModule):
    """Images sorted into one folder per class under ``train/`` and ``val/``; 3-channel RGB."""

    in_channels = 3
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        data_dir: str,
        image_size: int = 224,
        batch_size: int = 128,
        num_workers: int = 4,
        pin_memory: bool | None = None,
    ) -> None:
        """List the class folders (cheap: no image is opened), so ``num_classes`` is known at once.

        Args:
            data_dir: Folder holding train/<class>/ and val/<class>/ sub-folders of images.
            image_size: Side in pixels of the square crops fed to the model.
            batch_size: Samples per batch (per device under DDP).
            num_workers: DataLoader worker processes decoding and transforming images.
            pin_memory: Pin host memory for faster copies to the GPU; None pins only when CUDA is available.
        """
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        check_int("data image_size", image_size, 1)
        root = Path(data_dir).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(
                f"data_dir {root} does not exist: set --data.data_dir to a folder with train/ and val/ "
                f"class folders, or use an offline data module: {OFFLINE_MODULES}"
            )
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise ConfigError(
                    f"no {split}/ folder in {root}: ImageFolder expects {root}/{split}/<class>/<images>"
                )
        classes = class_names(root / "train")
        if len(classes) < 2:  # cross-entropy over one class learns nothing, and torchmetrics refuses it
            raise ConfigError(f"{root}/train holds {len(classes)} class folder ({', '.join(classes)}); "
                              "a classifier needs at least 2")
        val_classes = class_names(root / "val")
        if val_classes != classes:  # otherwise labels would silently mean different classes
            odd = sorted(set(classes) ^ set(val_classes))
            raise ConfigError(
                f"train/ and val/ in {root} hold different class folders; {len(odd)} in only one, "
                f"e.g. {', '.join(odd[:3])}"
            )
        self.data_dir = str(root)
        self.image_size = image_size
        self.classes = classes
        self.num_classes = len(classes)

    def transform(self, train: bool) -> v2.Compose:
        """PIL image -> normalized float tensor (3, image_size, image_size)."""
        if train:
            crop = [v2.RandomResizedCrop(self.image_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            crop = [v2.Resize(int(self.image_size / 0.875), antialias=True), v2.CenterCrop(self.image_size)]
        return v2.Compose(
            [v2.ToImage(), *crop, v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        )

    def setup(self, stage: str) -> None:
        """Index the image files of train/ (fit only) and val/ (every stage)."""
        if stage == "fit" and self.train_set is None:
            self.train_set = self._images("train", self.transform(train=True))
        if self.val_set is None:
            self.val_set = self.test_set = self._images("val", self.transform(train=False))

    def _images(self, split: str, transform: v2.Compose) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(Path(self.data_dir) / split), transform=transform)
        except FileNotFoundError as err:  # a class folder without a single image file
            raise ConfigError(f"{err} (in {self.data_dir}/{split})") from None
