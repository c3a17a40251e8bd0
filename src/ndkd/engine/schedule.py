"""Learning-rate schedule as a per-step factor: linear warm-up, then multistep or cosine."""

from __future__ import annotations

import math
from collections.abc import Sequence


def lr_factor(
    step: int,
    steps_per_epoch: int,
    *,
    epochs: int,
    schedule: str,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based).

    - warm-up: linear from ``1/W`` to 1 over the first ``W = warmup_epochs * steps_per_epoch``
      steps (never 0, so the first step moves);
    - ``multistep``: ``gamma ** (number of milestones <= current epoch)``, epochs counted from
      0 (so ``milestones=[150]`` decays from the 151st epoch on, as the public code);
    - ``cosine``: half cosine from 1 to 0 over all steps after the warm-up.
    """
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "multistep":
        epoch = step // steps_per_epoch
        return gamma ** sum(1 for m in milestones if epoch >= m)
    if schedule == "cosine":
        total = epochs * steps_per_epoch - warmup_steps
        progress = (step - warmup_steps) / max(total, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"unknown schedule {schedule!r}; expected multistep or cosine")
