"""Learning-rate factors and the term warm-up, against the schedules written out by hand."""

from __future__ import annotations

import math

import pytest

from ndkd.engine import lr_factor


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


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(0, 1, epochs=1, schedule="step")
