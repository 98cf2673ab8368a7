"""The warmup + cosine schedule: its shape, and the run length filled in after construction."""

import math

import pytest
import torch

from dyt_lab.training import WarmupCosineLR


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_linear_warmup_then_cosine_to_min():
    optimizer = _optimizer()
    schedule = WarmupCosineLR(optimizer, warmup_fraction=0.1, min_lr_ratio=0.1, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(1 / 11) and lrs[9] == pytest.approx(10 / 11)  # 10 warmup steps
    assert lrs[10] == pytest.approx(1.0)  # the peak, then cosine
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert schedule.factor(100) == pytest.approx(0.1)


def test_total_steps_set_later_reapplies_the_current_lr():
    optimizer = _optimizer(lr=2.0)
    schedule = WarmupCosineLR(optimizer, warmup_fraction=0.5)
    schedule.set_total_steps(10)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 / 6)  # step 0 of a 5-step warmup
    assert schedule.get_last_lr() == [pytest.approx(2.0 / 6)]


def test_bad_warmup_fraction():
    with pytest.raises(ValueError, match=r"warmup_fraction must be in \[0, 1\), got 1.5"):
        WarmupCosineLR(_optimizer(), warmup_fraction=1.5)
