"""What the loop reads of a run's training settings (``ndkd.config.TrainConfig`` is one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class LoopSettings(Protocol):
    """Hyper-parameters of the loop, read as attributes (no copy of the config); see
    ``ndkd.config.TrainConfig`` for what each means."""

    epochs: int
    iterations: int
    batch_size: int
    lr: float
    lr_reference_batch: int
    min_lr: float
    optimizer: str
    betas: Sequence[float]
    momentum: float
    nesterov: bool
    weight_decay: float
    decay_norms_and_biases: bool
    clip_grad_norm: float
    ema_decay: float
    schedule: str
    milestones: Sequence[int]
    gamma: float
    lr_warmup_epochs: float
    lr_warmup_iterations: int
    amp: str
    channels_last: bool
    compile: bool
    eval_every: int
    checkpoint_every_steps: int
    checkpoint_every_minutes: float
