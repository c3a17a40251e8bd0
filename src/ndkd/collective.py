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


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of ``tensor`` ``[n_r, ...]`` from every process, concatenated in rank order
    ``[sum_r n_r, ...]`` (the row counts may differ; identity without a process group).

    Two collectives: the row counts (one host sync), then the rows padded to the largest.
    """
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = torch.cat(counts).tolist()
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])
