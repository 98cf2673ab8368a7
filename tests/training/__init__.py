"""Tests of dyt_lab/training/: the LightningModules, callbacks, checkpoints, schedule and records; multi-node fits."""
