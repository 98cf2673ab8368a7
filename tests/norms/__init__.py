"""Tests of dyt_lab/norms/: the layers, the registry, the fused kernels, the converter."""
