"""LightningDataModules: offline embedded sets (Digits, MNIST5k), torchvision sets and image folders."""

from dyt_lab.data.base import ImageDataModule, stratified_split
from dyt_lab.data.embedded import Digits, MNIST5k, TensorDataModule
from dyt_lab.data.folder import ImageFolder
from dyt_lab.data.torchvision_sets import CIFAR10, CIFAR100, MNIST, FashionMNIST, TorchvisionDataModule

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "MNIST",
    "Digits",
    "FashionMNIST",
    "ImageDataModule",
    "ImageFolder",
    "MNIST5k",
    "TensorDataModule",
    "TorchvisionDataModule",
    "stratified_split",
]
