"""LightningModules, the learning-rate schedule and training callbacks."""

from dyt_lab.training.module import ImageClassifier, ResNetClassifier, ViTClassifier, parameter_groups
from dyt_lab.training.schedule import WarmupCosineLR

__all__ = ["ImageClassifier", "ResNetClassifier", "ViTClassifier", "WarmupCosineLR", "parameter_groups"]
