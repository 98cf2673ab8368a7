"""Tests of dyt_lab/models/: ViT and ResNet, placement, alpha rules, batch-free blocks, timm and torchvision models."""
