"""Tests of dyt_lab/data/: the embedded sets, torchvision sets, image folders and Fashion-MNIST."""
