"""A callback for tests/training/test_multinode.py: each rank writes what it ended with, in a file named by its global rank.

Passed to a real ``dyt-lab fit`` as ``--trainer.callbacks+=tests.multinode_probe.RankRecord
--trainer.callbacks.out_dir=DIR`` (the subprocess needs the repository root on PYTHONPATH).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RankRecord(Callback):
    """At the end of fit, save this rank's weights, ranks, world size and run folder to ``out_dir/rank{N}.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks; rank 0's answer
        logger = trainer.logger
        record = {
            "global_rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "local_rank": trainer.local_rank,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "cluster_environment": type(trainer.strategy.cluster_environment).__name__,
            "global_step": trainer.global_step,
            "log_dir": log_dir,
            "own_log_dir": None if logger is None else logger.log_dir,  # this rank's own idea, not broadcast
            "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
        }
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(record, out / f"rank{trainer.global_rank}.pt")
