"""Learning-rate factors and the term warm-up, against the schedules written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ndkd.config import TrainConfig
from ndkd.engine import lr_factor
from ndkd.engine.optim import build_optimizer
from ndkd.engine.schedule import build_scheduler


def test_multistep_counts_epochs_from_zero():
    kwargs = dict(epochs=240, schedule="multistep", milestones=[150, 180, 210], gamma=0.1)
    steps = 10
    assert lr_factor(0, steps, **kwargs) == 1.0
    assert lr_factor(149 * steps + 9, steps, **kwargs) == 1.0  # last step of epoch 150
    assert lr_factor(150 * steps, steps, **kwargs) == pytest.approx(0.1)  # 151st epoch
    assert lr_factor(180 * steps, steps, **kwargs) == pytest.approx(0.01)
    assert lr_factor(239 * steps, steps, **kwargs) == pytest.approx(0.001)


def test_linear_warmup_then_cosine():
    kwargs = dict(epochs=10, schedule="cosine", warmup_epochs=2)
    steps = 5
    assert [lr_factor(i, steps, **kwargs) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_factor(10, steps, **kwargs) == pytest.approx(1.0)
    midpoint = 10 + 20
    assert lr_factor(midpoint, steps, **kwargs) == pytest.approx(0.5)
    expected = 0.5 * (1 + math.cos(math.pi * 39 / 40))
    assert lr_factor(49, steps, **kwargs) == pytest.approx(expected)


def test_cosine_decays_to_the_floor():
    kwargs = dict(epochs=10, schedule="cosine", warmup_epochs=2, min_factor=0.2)
    steps = 5
    assert [lr_factor(i, steps, **kwargs) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    for step in range(10, 60):
        t = min((step - 10) / 40, 1.0)
        expected = 0.2 + (1 - 0.2) * 0.5 * (1 + math.cos(math.pi * t))
        assert lr_factor(step, steps, **kwargs) == pytest.approx(expected)
    assert lr_factor(50, steps, **kwargs) == pytest.approx(0.2)
    # no floor: the factor of the plain cosine, bit for bit
    plain = dict(epochs=10, schedule="cosine", warmup_epochs=2)
    assert all(
        lr_factor(i, steps, **plain, min_factor=0.0) == lr_factor(i, steps, **plain)
        for i in range(50)
    )


def test_scheduler_reaches_min_lr_from_the_effective_lr():
    """lr 0.5 per 256 images at batch 128: 0.25, one warm-up epoch, cosine to 0.01."""
    settings = TrainConfig(
        epochs=4,
        batch_size=128,
        lr=0.5,
        lr_reference_batch=256,
        min_lr=0.01,
        schedule="cosine",
        lr_warmup_epochs=1,
    )
    steps = 5
    optimizer = build_optimizer((torch.nn.Linear(2, 2),), settings)
    scheduler = build_scheduler(optimizer, settings, steps)
    lrs = []
    for _ in range(4 * steps + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    warmup = [0.25 * (s + 1) / 5 for s in range(5)]
    cosine = [0.01 + 0.24 * 0.5 * (1 + math.cos(math.pi * (s - 5) / 15)) for s in range(5, 21)]
    assert lrs == pytest.approx(warmup + cosine)
    assert lrs[-1] == pytest.approx(0.01)


def test_multistep_ignores_min_lr():
    settings = TrainConfig(epochs=3, lr=0.1, milestones=[1, 2], min_lr=0.05)
    optimizer = build_optimizer((torch.nn.Linear(2, 2),), settings)
    scheduler = build_scheduler(optimizer, settings, 2)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, 1, epochs=1, schedule="step")
