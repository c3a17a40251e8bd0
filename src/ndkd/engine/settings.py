"""What the loop reads of a run's training settings (``ndkd.config.TrainConfig`` is one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class LoopSettings(Protocol):
    """Hyper-parameters of the loop, read as attributes (no copy of the config)."""

    epochs: int
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    milestones: Sequence[int]
    gamma: float
    lr_warmup_epochs: float
    amp: str
    channels_last: bool
    compile: bool
    eval_every: int
