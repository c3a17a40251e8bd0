"""Exponential moving average (EMA) of a model's weights, kept beside the trained model."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """An eval-mode copy of ``model`` whose state follows ``model``'s as
    ``ema = decay * ema + (1 - decay) * current`` at every :meth:`update`, for every floating
    tensor of the state dict (parameters and buffers such as BatchNorm statistics, as timm's
    ``ModelEmaV3``); other tensors (counters) are copied.

    The copy lives on ``model``'s devices and dtypes; one fused update per step over tensors
    listed once here, so move or convert ``model`` (``.to(...)``) before building this.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), found {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        ema = self.module.state_dict(keep_vars=True)
        source = model.state_dict(keep_vars=True)
        first: dict[int, str] = {}  # a tensor under several keys (tied weights) is updated once
        for key, value in ema.items():
            first.setdefault(id(value), key)
        keys = list(first.values())
        floating = [k for k in keys if ema[k].is_floating_point()]
        others = [k for k in keys if not ema[k].is_floating_point()]
        self._averaged = ([ema[k] for k in floating], [source[k] for k in floating])
        self._copied = ([ema[k] for k in others], [source[k] for k in others])

    @torch.no_grad()
    def update(self) -> None:
        """Move the average one step towards the model's current state."""
        averaged, current = self._averaged
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        for target, value in zip(*self._copied):
            target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state dict (the model's keys)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (in place: the update keeps working)."""
        self.module.load_state_dict(state)
