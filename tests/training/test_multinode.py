"""Lightning's multi-node path on one machine: two torchrun "nodes" on loopback, one CPU process each (gloo).

Each node is its own ``torchrun --nnodes 2 --node_rank N`` (static rendezvous on 127.0.0.1), as a
user would start one per machine; ``--trainer.num_nodes 2 --trainer.devices 1`` makes it one
world of two ranks. ``tests.multinode_probe.RankRecord`` has every rank save its weights, ranks
and run folder at the end of fit, and the test compares them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ROOT, fit_args, free_port

TRAIN_BATCHES = 3


def _env(cwd: Path) -> dict[str, str]:
    """The user's environment, one thread per process, the repository importable, no launcher's variables."""
    root = str(ROOT)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_"))
           and k not in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                         "GROUP_RANK", "LOCAL_WORLD_SIZE", "DYT_LAB_DEBUG")}
    pythonpath = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath, "PYTHONWARNINGS": "ignore",
            "MPLCONFIGDIR": str(cwd / ".mpl")}


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(none)"


def _run_two_nodes(work: Path, port: int, timeout: float) -> tuple[list[int | None], str]:
    """Start both nodes, wait for both; return their exit codes (None: killed at the timeout) and stderr tails."""
    save_dir, ranks_dir = work / "runs", work / "ranks"
    args = fit_args(save_dir, "--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.accelerator=cpu",
                    "--trainer.strategy=ddp", "--trainer.max_epochs=1",
                    f"--trainer.limit_train_batches={TRAIN_BATCHES}", "--trainer.limit_val_batches=2",
                    "--trainer.callbacks+=tests.multinode_probe.RankRecord",
                    f"--trainer.callbacks.out_dir={ranks_dir}")
    env = _env(work)
    procs = []
    for node_rank in (0, 1):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                    f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port}"]
        with open(work / f"node{node_rank}.out", "w") as out, open(work / f"node{node_rank}.err", "w") as err:
            # Own session: on a timeout the whole node (torchrun and its worker) is killed as a group.
            procs.append(subprocess.Popen([*launcher, "-m", "dyt_lab", *args], cwd=work, env=env, stdout=out,
                                          stderr=err, start_new_session=True))
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    for proc, code in zip(procs, codes):
        if code is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    tails = "\n".join(f"--- node {r} (exit {c}) stderr tail:\n{_tail(work / f'node{r}.err')}"
                      for r, c in enumerate(codes))
    return codes, tails


@pytest.mark.slow
def test_two_nodes_on_loopback_train_as_one_world_into_one_run_folder(tmp_path):
    for attempt in range(3):  # the port is free when chosen; another process may take it before torchrun binds it
        work = tmp_path / f"attempt{attempt}"
        work.mkdir()
        codes, tails = _run_two_nodes(work, free_port(), timeout=200)
        if codes != [0, 0] and "address already in use" in tails.lower():
            continue
        break
    assert codes == [0, 0], tails
    assert "All distributed processes registered. Starting with 2 processes" in (work / "node0.err").read_text(), tails

    records = [torch.load(work / "ranks" / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [(r["global_rank"], r["node_rank"], r["local_rank"]) for r in records] == [(0, 0, 0), (1, 1, 0)]
    assert {(r["world_size"], r["num_nodes"]) for r in records} == {(2, 2)}
    assert {r["cluster_environment"] for r in records} == {"TorchElasticEnvironment"}
    assert [r["global_step"] for r in records] == [TRAIN_BATCHES] * 2

    weights0, weights1 = records[0]["state_dict"], records[1]["state_dict"]
    assert weights0.keys() == weights1.keys() and weights0
    differ = [k for k in weights0 if not torch.equal(weights0[k], weights1[k])]
    assert not differ, f"ranks ended with different weights in {differ[:5]}"

    # One run folder, chosen by rank 0 and agreed on by rank 1 (its own logger's idea too, not just the broadcast).
    save_dir = work / "runs"
    run = save_dir / "quickstart" / "version_0"
    assert [p.relative_to(save_dir) for p in save_dir.rglob("version_*")] == [run.relative_to(save_dir)]
    assert {r["log_dir"] for r in records} == {r["own_log_dir"] for r in records} == {str(run)}
    assert not list(work.rglob("lightning_logs")), "a rank wrote into Lightning's default log folder"
    assert (run / "config.yaml").is_file() and (run / "placement.txt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["num_nodes"] == 2
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == TRAIN_BATCHES
    assert all(torch.equal(ckpt["state_dict"][k], weights0[k]) for k in weights0)
    # What only rank 0 prints: the site -> norm table (stdout) and the run summary (stderr).
    outputs = [((work / f"node{r}.out").read_text(), (work / f"node{r}.err").read_text()) for r in (0, 1)]
    assert "blocks.0.norm1" in outputs[0][0] and "Done: val/acc_best" in outputs[0][1], tails
    assert "blocks.0.norm1" not in outputs[1][0] and "Done:" not in outputs[1][1], tails
