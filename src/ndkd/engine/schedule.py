"""Learning-rate schedule as a per-step factor: linear warm-up, then multistep or cosine."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ndkd.engine.optim import effective_lr
from ndkd.engine.settings import LoopSettings


def lr_factor(
    step: int,
    steps_per_epoch: int,
    *,
    epochs: int,
    schedule: str,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    min_factor: float = 0.0,
) -> float:
    """Multiplier of the base LR at optimizer step ``step`` (0-based).

    - warm-up: linear from ``1/W`` to 1 over the first ``W = warmup_epochs * steps_per_epoch``
      steps (never 0, so the first step moves);
    - ``multistep``: ``gamma ** (number of milestones <= current epoch)``, epochs counted from
      0 (so ``milestones=[150]`` decays from the 151st epoch on, as the public code);
    - ``cosine``: half cosine from 1 to ``min_factor`` over all steps after the warm-up,
      ``m + (1 - m) * (1 + cos(pi * t)) / 2`` with ``t`` the fraction of those steps done.
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
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return min_factor + (1.0 - min_factor) * cosine
    raise ValueError(f"unknown schedule {schedule!r}; expected multistep or cosine")


def planned_epochs(settings: LoopSettings, steps_per_epoch: int) -> tuple[int, int]:
    """``(epochs, steps of the last epoch)``: ``settings.epochs`` whole passes, or with an
    iteration budget (``settings.iterations`` > 0) as many passes as it takes, the last one
    cut at the budget."""
    if steps_per_epoch < 1:
        raise ValueError("the training loader yields no batch")
    if not settings.iterations:
        return settings.epochs, steps_per_epoch
    epochs = math.ceil(settings.iterations / steps_per_epoch)
    return epochs, settings.iterations - (epochs - 1) * steps_per_epoch


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: LoopSettings, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :func:`lr_factor` schedule of ``settings`` over ``optimizer`` (built at
    :func:`~ndkd.engine.optim.effective_lr`); the cosine floor is ``min_lr`` (absolute).
    With an iteration budget the step is the unit: ``milestones`` and
    ``lr_warmup_iterations`` count optimizer steps, the cosine spans ``iterations``."""
    min_factor = settings.min_lr / effective_lr(settings)
    if settings.iterations:  # lr_factor with one "epoch" per step
        per_epoch, length, warmup = 1, settings.iterations, settings.lr_warmup_iterations
    else:
        per_epoch, length, warmup = steps_per_epoch, settings.epochs, settings.lr_warmup_epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            per_epoch,
            epochs=length,
            schedule=settings.schedule,
            milestones=settings.milestones,
            gamma=settings.gamma,
            warmup_epochs=warmup,
            min_factor=min_factor,
        ),
    )
