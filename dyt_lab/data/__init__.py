"""LightningDataModules: embedded sets (Digits, MNIST5k), Fashion-MNIST, torchvision sets and image folders."""

from dyt_lab.data.base import ImageDataModule, stratified_split
from dyt_lab.data.embedded import Digits, MNIST5k, TensorDataModule
from dyt_lab.data.fashion_mnist import FashionMNIST
from dyt_lab.data.folder import ImageFolder
from dyt_lab.data.torchvision_sets import CIFAR10, CIFAR100, MNIST, TorchvisionDataModule

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
