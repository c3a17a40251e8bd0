"""Samplers for streamed (per-sample) data sets: resumable, rank-sharded epoch orders.

:class:`EpochShardSampler` yields ``(index, epoch)`` keys: the epoch travels with every
index to the worker that loads it, so a dataset can seed its augmentation from
``(seed, epoch, index)`` even in persistent workers (which hold their own copy of the
dataset and never see ``set_epoch``). Its order matches
``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)`` exactly, and
:meth:`EpochShardSampler.skip` resumes an epoch part-way without touching the skipped
samples.

With ``repeats=K > 1`` (repeated augmentation, DeiT) it yields ``(index, epoch, copy)``
keys in the order of timm's ``RepeatAugSampler(selected_round=0)`` (see
:func:`repeated_shard`; the permutation is still seeded with ``seed + epoch``, where timm
seeds it with ``epoch``), so a dataset can augment the copies of a sample differently.

:class:`GroupedShardSampler` reorders a rank's share so that consecutive batches hold
images of one aspect-ratio bin (torchvision's ``GroupedBatchSampler`` with
``create_aspect_ratio_groups``), with the same samples, batch count and resumption.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import repeat

import numpy as np
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


def repeated_shard(
    order: torch.Tensor, rank: int, world_size: int, repeats: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s share of ``order`` under repeated augmentation: ``(indices, copies)``.

    timm's ``RepeatAugSampler`` (from DeiT's ``RASampler``) with ``selected_round=0``: each
    index of ``order`` repeated ``repeats`` times in a row (``repeat_interleave``), position
    ``p`` of that list going to rank ``p % world_size`` (so consecutive copies of a sample
    land on different ranks), padded by wrap-around, and only the first
    ``ceil(len(order) / world_size)`` positions of each rank kept: an epoch is as long as
    without repetition (about ``len(order) / repeats`` distinct samples, each ``repeats``
    times). ``copies[j]`` is the copy number (``0..repeats-1``) of ``indices[j]``.
    """
    size = len(order)
    kept = math.ceil(size / world_size)
    positions = torch.arange(kept, dtype=torch.int64) * world_size + rank
    positions %= size * repeats
    return order[positions // repeats], positions % repeats


class EpochShardSampler(Sampler[tuple[int, ...]]):
    """This rank's share of a seeded per-epoch permutation, as ``(index, epoch)`` keys.

    Args:
        size: samples in the data set.
        seed: the order of epoch ``e`` is ``randperm(size)`` from a generator seeded with
            ``seed + e`` (the same on every rank).
        rank, world_size: the shard (padded by wrap-around like ``DistributedSampler``).
        shuffle: ``False`` keeps dataset order (still sharded and padded).
        repeats: repeated augmentation: ``K > 1`` repeats each index ``K`` times in the
            order, spread over the ranks, and yields ``(index, epoch, copy)`` keys
            (:func:`repeated_shard`); ``1``: off, ``(index, epoch)`` keys. The samples per
            rank and epoch are ``ceil(size / world_size)`` either way.

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
        repeats: int = 1,
    ):
        check_shard(rank, world_size)
        if size < 1:
            raise ValueError("cannot sample from an empty data set")
        if repeats < 1:
            raise ValueError(f"repeats must be positive, got {repeats}")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.repeats = repeats
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

    def shard(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's ``(indices, copies)`` for the current epoch, in order (``int64``);
        ``copies`` is ``None`` without repeated augmentation."""
        order = epoch_order(self.size, self.seed, self.epoch, shuffle=self.shuffle)
        if self.repeats > 1:
            return repeated_shard(order, self.rank, self.world_size, self.repeats)
        return shard_indices(order, self.rank, self.world_size), None

    def indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch, in order (``int64``)."""
        return self.shard()[0]

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        start, self._skip = self._skip, 0
        indices, copies = self.shard()
        if copies is None:
            return zip(indices[start:].tolist(), repeat(self.epoch))
        return zip(indices[start:].tolist(), repeat(self.epoch), copies[start:].tolist())


def aspect_ratio_groups(ratios: np.ndarray, k: int = 3) -> np.ndarray:
    """The bin (``int64``, ``0..2k+1``) of each aspect ratio (width / height):
    torchvision's ``create_aspect_ratio_groups``, bin edges ``2 ** linspace(-1, 1, 2k + 1)``
    (a ratio on an edge goes to the bin above it)."""
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    edges = 2.0 ** np.linspace(-1, 1, 2 * k + 1) if k else np.array([1.0])
    return np.digitize(np.asarray(ratios, dtype=np.float64), edges).astype(np.int64)


def grouped_order(groups: np.ndarray, batch_size: int) -> np.ndarray:
    """The positions ``0..n-1`` of a sequence whose items have bins ``groups`` (``[n]``),
    reordered so that cutting them into consecutive batches of ``batch_size`` gives
    torchvision's ``GroupedBatchSampler`` batches: walking the sequence, each item joins
    its bin's buffer and a full buffer is a batch (batches in the order they fill). The
    leftovers of all bins follow, concatenated in sequence order (so only the last
    ``ceil(leftovers / batch_size)`` batches may mix bins, and there are still
    ``ceil(n / batch_size)`` batches, the last possibly short)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    groups = np.asarray(groups, dtype=np.int64)
    positions = np.arange(len(groups))
    by_group = np.argsort(groups, kind="stable")  # bin by bin, sequence order within a bin
    counts = np.bincount(groups)
    starts = (np.cumsum(counts) - counts)[groups]  # where an item's bin starts in by_group
    rank = np.empty_like(positions)
    rank[by_group] = positions - starts[by_group]  # items of the same bin before it
    full = rank < (counts // batch_size * batch_size)[groups]
    in_batches = positions[full]
    # A full batch is emitted when its last item is reached: sort by that item's position.
    last = starts[full] + (rank[full] // batch_size + 1) * batch_size - 1
    in_batches = in_batches[np.lexsort((in_batches, by_group[last]))]
    return np.concatenate([in_batches, positions[~full]])


class GroupedShardSampler(EpochShardSampler):
    """:class:`EpochShardSampler` with each rank's share reordered by
    :func:`grouped_order`: consecutive ``batch_size`` keys form one batch of a single
    aspect-ratio bin (the final batches, made of the bins' leftovers, may mix bins). The
    keys, their count and :meth:`skip` are as without grouping; the order still depends
    only on ``(seed, epoch)`` and the shard.

    Args:
        groups: the bin of each sample (``[size]``, e.g. :func:`aspect_ratio_groups`).
        batch_size: the batch size the keys are grouped for.
        seed, rank, world_size, shuffle, repeats: as for :class:`EpochShardSampler`.
    """

    def __init__(
        self,
        groups: np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        repeats: int = 1,
    ):
        super().__init__(
            len(groups),
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle=shuffle,
            repeats=repeats,
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.groups = np.asarray(groups, dtype=np.int64)
        self.batch_size = batch_size

    def shard(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        indices, copies = super().shard()
        order = torch.from_numpy(grouped_order(self.groups[indices.numpy()], self.batch_size))
        return indices[order], None if copies is None else copies[order]
