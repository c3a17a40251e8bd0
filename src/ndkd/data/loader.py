"""A fast loader over an in-memory dataset: whole batches indexed and augmented at once.

For CIFAR-sized data the per-sample ``DataLoader`` path (one Python call per image, worker
processes, collation) is the bottleneck of a training step. :class:`InMemoryLoader` keeps the
``uint8`` images on one device (the GPU if asked: CIFAR-100's training set is 150 MB) and
produces each batch with one gather and the batched transform.

Determinism: the sample order of epoch ``e`` comes from a CPU generator seeded with
``seed + e`` (the same on every rank, as ``DistributedSampler`` does; the same order as the
streaming loaders', :mod:`ndkd.data.sampling`); augmentation draws
come from a CPU generator seeded from ``(seed, e, rank)``, drawn once per epoch and moved to
the device, so results do not depend on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from ndkd.data.augment import draw_crop_flip
from ndkd.data.datasets import ImageTensorDataset
from ndkd.data.sampling import check_shard, epoch_order, shard_indices


class InMemoryLoader:
    """Iterate ``(images, labels)`` batches of ``dataset``, transformed by ``dataset.transform``
    (``labels``: ``[B]`` class indices or ``[B, C]`` multi-label targets, as the dataset has).

    Args:
        dataset: the in-memory dataset; its ``transform`` (if any) is applied to each batch.
        batch_size: samples per batch, per rank.
        shuffle: reshuffle every epoch (see :meth:`set_epoch`); else dataset order.
        drop_last: drop each rank's last incomplete batch.
        device: where the dataset is kept and batches are produced; default: where it is.
        seed: base seed of shuffling and augmentation.
        return_indices: yield ``(images, labels, dataset_indices)`` (e.g. for CRD).
        rank, world_size: distributed shard. Rank ``r`` takes every ``world_size``-th sample
            of the epoch order starting at ``r``; like ``DistributedSampler`` the order is
            first padded by wrapping around so every rank gets the same number of samples.
    """

    def __init__(
        self,
        dataset: ImageTensorDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        return_indices: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        check_shard(rank, world_size)
        if len(dataset) == 0:
            raise ValueError("cannot load from an empty dataset")
        self.images = dataset.images.to(device) if device is not None else dataset.images
        self.labels = dataset.labels.to(self.images.device)
        self.transform = dataset.transform
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.return_indices = return_indices
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling and augmentation of ``epoch`` for the next iteration."""
        self.epoch = epoch

    def start_at(self, step: int) -> None:
        """Begin the next iteration at batch ``step`` of the epoch (a mid-epoch resume): the
        same batches, augmented the same way, as an uninterrupted epoch has from there."""
        if not 0 <= step <= len(self):
            raise ValueError(f"start_at: step must be in [0, {len(self)}], found {step}")
        self.start = step

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch."""
        return math.ceil(len(self.images) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order (CPU ``int64``)."""
        order = epoch_order(len(self.images), self.seed, self.epoch, shuffle=self.shuffle)
        return shard_indices(order, self.rank, self.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        indices = self.indices()
        params = None
        if self.transform is not None and self.transform.train:
            seed = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(1)
            generator = torch.Generator().manual_seed(int(seed[0]))
            params = draw_crop_flip(len(indices), self.transform.padding, generator)
            params = params.to(self.images.device)
        indices = indices.to(self.images.device)
        first, self.start = self.start * self.batch_size, 0
        for start in range(first, len(self) * self.batch_size, self.batch_size):
            batch = indices[start : start + self.batch_size]
            images = self.images[batch]
            if self.transform is not None:
                window = None if params is None else params[start : start + self.batch_size]
                images = self.transform(images, params=window)
            if self.return_indices:
                yield images, self.labels[batch], batch
            else:
                yield images, self.labels[batch]
