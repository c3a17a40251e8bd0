"""Samplers for streamed (per-sample) data sets: resumable, rank-sharded epoch orders.

:class:`EpochShardSampler` yields ``(index, epoch)`` keys: the epoch travels with every
index to the worker that loads it, so a dataset can seed its augmentation from
``(seed, epoch, index)`` even in persistent workers (which hold their own copy of the
dataset and never see ``set_epoch``). Its order matches
``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)`` exactly, and
:meth:`EpochShardSampler.skip` resumes an epoch part-way without touching the skipped
samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import repeat

import torch
from torch.utils.data import Sampler


def check_shard(rank: int, world_size: int) -> None:
    """Raise ``ValueError`` unless ``0 <= rank < world_size``."""
    if world_size < 1:
        raise ValueError(f"world_size must be positive, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")


def epoch_order(size: int, seed: int, epoch: int, *, shuffle: bool = True) -> torch.Tensor:
    """All ``size`` indices in the order of ``epoch``: ``randperm`` of a generator seeded
    with ``seed + epoch`` (as ``DistributedSampler`` does), or ``0..size-1``."""
    if not shuffle:
        return torch.arange(size)
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(size, generator=generator)


def shard_indices(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s share of ``order``: padded by wrapping around to a multiple of
    ``world_size``, then every ``world_size``-th index from ``rank`` (``DistributedSampler``)."""
    padded = math.ceil(len(order) / world_size) * world_size
    if padded > len(order):
        order = order.repeat(math.ceil(padded / len(order)))[:padded]
    return order[rank::world_size]


class EpochShardSampler(Sampler[tuple[int, int]]):
    """This rank's share of a seeded per-epoch permutation, as ``(index, epoch)`` keys.

    Args:
        size: samples in the data set.
        seed: the order of epoch ``e`` is ``randperm(size)`` from a generator seeded with
            ``seed + e`` (the same on every rank).
        rank, world_size: the shard (padded by wrap-around like ``DistributedSampler``).
        shuffle: ``False`` keeps dataset order (still sharded and padded).

    The epoch and skip are read when iteration starts (like ``DistributedSampler``): call
    :meth:`set_epoch` and :meth:`skip` before iterating.
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        check_shard(rank, world_size)
        if size < 1:
            raise ValueError("cannot sample from an empty data set")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self._skip = 0

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (padding included)."""
        return math.ceil(self.size / self.world_size)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch`` for the next iteration."""
        self.epoch = epoch

    def skip(self, samples: int) -> None:
        """Start the next iteration after the first ``samples`` keys of this rank's order
        (consumed by that iteration; later ones start from the beginning)."""
        if not 0 <= samples <= self.num_samples:
            raise ValueError(f"can skip 0..{self.num_samples} samples, got {samples}")
        self._skip = samples

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, in order (``int64``)."""
        order = epoch_order(self.size, self.seed, self.epoch, shuffle=self.shuffle)
        return shard_indices(order, self.rank, self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, self._skip = self._skip, 0
        return zip(self.indices()[start:].tolist(), repeat(self.epoch))
