"""Collective helpers that are no-ops without a process group (every layer may use them)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (identity without a process group)."""
    if is_distributed():
        dist.all_reduce(tensor)
    return tensor


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers of ``module`` (BatchNorm statistics) to every process."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)
