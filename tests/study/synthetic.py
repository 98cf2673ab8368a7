"""Synthetic seed tables for the report's tests, drawn from a known linear model: every configuration of a 2^4
design (center, scale, squash, lr) with three seeds that share a block effect (``make_table``, its noiseless
mean ``truth``), and a gap measured at several depths (``depth_table``)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

FACTORS = ["center", "scale", "squash", "lr"]
LEVELS = {"center": ["none", "batch"], "scale": ["alpha", "batch_std"], "squash": ["tanh", "none"],
          "lr": [0.001, 0.01]}
SEED_SHIFT = {0: -0.01, 1: 0.0, 2: 0.015}  # a block effect every configuration shares
START = {"center": "none", "scale": "alpha", "squash": "tanh"}  # DyT's cell
END = {"center": "batch", "scale": "batch_std", "squash": "none"}  # BN's cell


def truth(row, interaction: float = 0.04, mains: tuple = (0.02, 0.10, 0.0, 0.03), three_way: float = 0.0) -> float:
    """Noiseless mean: main effects for center, scale, (null) squash, lr, a center x scale interaction, and
    a center x scale x squash one (the corner where BatchNorm's parts only pay off together)."""
    c, s, q = row["center"] == "batch", row["scale"] == "batch_std", row["squash"] == "none"
    return (0.80 + mains[0] * c + mains[1] * s + mains[2] * q
            + mains[3] * (row["lr"] == 0.01) + interaction * (c and s) + three_way * (c and s and q))


def make_table(noise: float = 0.004, seed: int = 0, **kw) -> pd.DataFrame:
    """Each configuration with each seed: its noiseless mean ``mu`` (``truth`` with ``kw``) and its ``value``, with
    the seed's block effect and normal noise."""
    rng = np.random.default_rng(seed)
    rows = [dict(zip(FACTORS, cfg), seed=s) for cfg in itertools.product(*LEVELS.values()) for s in SEED_SHIFT]
    table = pd.DataFrame(rows)
    table["mu"] = table.apply(lambda r: truth(r, **kw), axis=1)
    table["value"] = table["mu"] + table["seed"].map(SEED_SHIFT) + rng.normal(0, noise, len(table))
    return table


def cell(table: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The rows of ``table`` at ``config``'s levels."""
    return table[np.logical_and.reduce([table[f] == v for f, v in config.items()])]


def depth_table(change: float, noise: float = 0.002, seed: int = 5) -> pd.DataFrame:
    """BatchNorm and two DyT arms at two depths, 4 seeds; DyT at 0.5 loses ``change`` more in the deep net."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame([{"name, alpha_init": arm, "preset": p, "seed": s} for arm in ("batchnorm, -", "dyt, 0.5", "dyt, 1.0")
                          for p in ("tiny", "deep") for s in range(4)])
    gap = {"batchnorm, -": 0.0, "dyt, 0.5": 0.04, "dyt, 1.0": 0.02}
    table["value"] = [0.95 - gap[a] - change * (a == "dyt, 0.5" and p == "deep") + SEED_SHIFT.get(s, 0.005)
                      + rng.normal(0, noise) for a, p, s in zip(table["name, alpha_init"], table["preset"], table["seed"])]
    return table
