"""Image sets streamed from disk: the shared dataset base, decoding and the loaders.

A :class:`SeededDataset` gives each sample a per-sample NumPy generator for its
augmentation; a :class:`StreamingDataset` is one that decodes one image file per sample, its
subclasses saying which file and which target a sample has
(:class:`~ndkd.data.imagefolder.ImageFolderDataset`: a class index;
:class:`~ndkd.data.multilabel.MultiLabelDataset`: a multi-hot vector;
:class:`~ndkd.data.detection.DetectionDataset`: boxes and their labels). File names are kept
in one byte buffer (:class:`NameBuffer`), so worker processes share the listing without
copy-on-write growth.

Determinism: the augmentation of sample ``i`` in epoch ``e`` comes from a NumPy generator
seeded with ``(seed, e, i)`` (copy ``c > 0`` under repeated augmentation: ``(seed, e, i,
c)``), so it depends on nothing else (worker count, the worker a sample lands on, where a
run resumed). The loaders pass the epoch with each index
(:class:`~ndkd.data.sampling.EpochShardSampler`), which lets the training workers persist.

Unreadable or corrupt images are refused: loading one raises ``ValueError`` naming the file
(silently replacing samples would change the data a run reports on).
"""

from __future__ import annotations

import copy
import math
import operator
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ndkd.data.sampling import (
    EpochShardSampler,
    GroupedShardSampler,
    aspect_ratio_groups,
    check_shard,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class NameBuffer:
    """File names in one ``uint8`` buffer with ``[start, end)`` offsets (no per-file Python
    objects)."""

    buffer: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, names: Sequence[str]) -> NameBuffer:
        """Pack ``names`` (none may contain a NUL character)."""
        if not names:
            empty = np.zeros(0, dtype=np.int64)
            return cls(np.zeros(0, dtype=np.uint8), empty, empty)
        buffer = np.frombuffer(os.fsencode("\0".join(names)), dtype=np.uint8)
        separators = np.flatnonzero(buffer == 0)
        starts = np.concatenate([[0], separators + 1]).astype(np.int64)
        ends = np.concatenate([separators, [len(buffer)]]).astype(np.int64)
        return cls(buffer, starts, ends)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> str:
        return os.fsdecode(self.buffer[self.starts[index] : self.ends[index]].tobytes())


# ---------------------------------------------------------------------------------------
# Decoding


def _jpeg_decoder() -> Any:
    try:  # deprecated since torchvision 0.29 (TorchCodec takes over); Pillow is the fallback
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    return lambda data: decode_jpeg(data, mode=ImageReadMode.RGB)


_DECODE_JPEG = _jpeg_decoder()
_JPEG_SUFFIXES = (".jpg", ".jpeg")


def decode_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode ``path`` into an RGB ``uint8`` tensor ``[3, H, W]`` (a channels-last view, as
    ``v2.PILToTensor`` gives). ``.jpg``/``.jpeg`` files go to ``torchvision.io.decode_jpeg``
    (libjpeg-turbo, the same pixels as Pillow, faster); other formats, and files it
    rejects (e.g. a PNG named ``.JPEG``), to Pillow.

    Raises:
        ValueError: the file cannot be read or decoded (names the file).
    """
    path = os.fspath(path)
    with warnings.catch_warnings():  # torchvision's deprecation notice; read-only buffers
        warnings.simplefilter("ignore")
        if _DECODE_JPEG is not None and path.lower().endswith(_JPEG_SUFFIXES):
            try:
                with open(path, "rb") as file:
                    return _DECODE_JPEG(torch.frombuffer(file.read(), dtype=torch.uint8))
            except (OSError, RuntimeError, ValueError):
                pass  # Pillow decides (and names the file if it cannot read it either)
        try:
            with Image.open(path) as opened:
                rgb = opened if opened.mode == "RGB" else opened.convert("RGB")
                pixels = np.asarray(rgb)
        except Exception as error:  # Pillow raises many types for broken files
            raise ValueError(f"cannot read image {path}: {error}") from error
        return torch.from_numpy(pixels).permute(2, 0, 1)  # never written: transforms copy


def normalize_image(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A ``uint8`` image ``[3, H, W]`` as contiguous ``float32`` ``(x / 255 - mean) / std``
    (``mean``, ``std``: ``[3, 1, 1]``): ``v2.ToDtype(float32, scale=True)`` +
    ``v2.Normalize``, the same operations in order."""
    out = torch.empty(image.shape, dtype=torch.float32).copy_(image)
    return out.mul_(1.0 / 255).sub_(mean).div_(std)


# ---------------------------------------------------------------------------------------
# Datasets


class Augmentation(Protocol):
    """A transform that augments in training (it then needs the sample's generator)."""

    train: bool


class SampleTransform(Augmentation, Protocol):
    """A per-sample transform: ``uint8`` ``[3, H, W]`` -> ``float32`` image; a training
    transform draws its augmentation from ``rng``."""

    def __call__(
        self, image: torch.Tensor, rng: np.random.Generator | None = None
    ) -> torch.Tensor: ...


D = TypeVar("D", bound="SeededDataset")


class SeededDataset(Dataset[tuple[Any, ...]], ABC):
    """Samples augmented by a per-sample generator: ``dataset[key]`` is ``(image, target)``.

    ``key`` is an index, ``(index, epoch)`` or ``(index, epoch, copy)`` (what the loaders
    pass; ``copy``: the repeated-augmentation copy, default 0). With a training transform
    the augmentation of ``(index, epoch)`` is seeded by ``(seed, epoch, index)`` only, that
    of copy ``c > 0`` by ``(seed, epoch, index, c)``; a bare index uses the epoch of
    :meth:`set_epoch`. Subclasses give the length and make the sample.
    """

    collate: Callable[[list[Any]], Any] | None = None
    """How the loaders batch samples (``None``: ``DataLoader``'s default, stacking)."""

    def __init__(self, transform: Augmentation, seed: int = 0):
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def _sample(self, index: int, rng: np.random.Generator | None) -> tuple[Any, ...]:
        """Sample ``index`` (in range) augmented with ``rng`` (``None``: not augmented)."""

    def set_epoch(self, epoch: int) -> None:
        """The epoch used by bare-index access (the loaders pass it with each index)."""
        self.epoch = epoch

    def aspect_ratios(self) -> np.ndarray | None:
        """Each sample's image width / height (``float64`` ``[N]``), for
        :class:`TrainLoader`'s aspect-ratio grouping; ``None`` (here): not known, no
        grouping."""
        return None

    def with_transform(self: D, transform: Augmentation) -> D:
        """The same samples (shared storage) under ``transform``."""
        return self._copy(transform, self.seed)

    def with_seed(self: D, seed: int) -> D:
        """The same samples and transform with augmentation seed ``seed``."""
        return self._copy(self.transform, seed)

    def _copy(self: D, transform: Augmentation, seed: int) -> D:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        clone = copy.copy(self)
        clone.transform, clone.seed, clone.epoch = transform, seed, 0
        return clone

    def _check(self, index: int) -> int:
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return index

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[Any, ...]:
        index, epoch, copy_ = (*key, 0)[:3] if isinstance(key, tuple) else (key, self.epoch, 0)
        index = self._check(index)
        if copy_ < 0:
            raise ValueError(f"copy must be non-negative, got {copy_}")
        rng = None
        if self.transform.train:
            entropy = [self.seed, epoch, index] + ([copy_] if copy_ else [])
            rng = np.random.default_rng(entropy)
        return self._sample(index, rng)


class StreamingDataset(SeededDataset):
    """One split of an image set on disk: ``dataset[key]`` is ``(image, target)``, the image
    decoded from its file and passed through the transform (a :class:`SampleTransform`;
    ``key`` and the seeding: :class:`SeededDataset`). Subclasses give the length, each
    sample's file and its target."""

    @abstractmethod
    def _file(self, index: int) -> str:
        """The image file of sample ``index`` (in range)."""

    @abstractmethod
    def _target(self, index: int) -> Any:
        """The target of sample ``index`` (in range)."""

    def path(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return Path(self._file(self._check(index)))

    def _sample(self, index: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, Any]:
        return self.transform(decode_image(self._file(index)), rng), self._target(index)


# ---------------------------------------------------------------------------------------
# Loaders


class _WithIndices(Dataset[tuple[Any, ...]]):
    """``dataset[key] + (index,)``."""

    def __init__(self, dataset: SeededDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[Any, ...]:
        index = key[0] if isinstance(key, tuple) else key
        return (*self.dataset[key], index)


def _data_loader(
    dataset: SeededDataset,
    batch_size: int,
    sampler: Any,
    *,
    num_workers: int,
    drop_last: bool,
    return_indices: bool,
    pin_memory: bool | None,
    persistent: bool,
) -> DataLoader:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    workers = num_workers > 0
    return DataLoader(
        _WithIndices(dataset) if return_indices else dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=persistent and workers,
        prefetch_factor=2 if workers else None,
        collate_fn=dataset.collate,
        # Its own generator: iterating never draws from the global RNG.
        generator=torch.Generator(),
    )


class TrainLoader:
    """Shuffled, rank-sharded, resumable training batches of a :class:`SeededDataset`.

    Yields ``(images [B, 3, S, S] float32, targets)`` (class labels: ``[B]`` int64;
    multi-hot targets: ``[B, C]``), plus ``dataset_indices [B]`` with ``return_indices``,
    batched by the dataset's ``collate`` (e.g. detection's tuples of images and targets).
    The order of epoch ``e`` is ``DistributedSampler``'s (seed ``seed + e``, padded by
    wrap-around, ``rank::world_size``); the augmentation of a sample depends only on
    ``(seed, e, index)``. Workers persist across epochs: the epoch is sent with every index.

    ``repeated_augmentations=K > 1``: repeated augmentation (DeiT, timm's
    ``RepeatAugSampler`` with ``selected_round=0``): each sample of the epoch order ``K``
    times, the copies spread over the ranks and augmented differently (copy ``c`` seeded by
    ``(seed, e, index, c)``); still ``ceil(N / world_size)`` samples per rank and epoch, so
    about ``N / K`` distinct samples an epoch. ``0`` or ``1``: off.

    A dataset with :meth:`~SeededDataset.aspect_ratios` (detection) is batched by aspect
    ratio, as torchvision's detection references do (``GroupedBatchSampler``,
    ``create_aspect_ratio_groups(k=3)``: bin edges ``2 ** linspace(-1, 1, 7)``): the same
    samples per rank and epoch, reordered so that each batch holds one bin, except the
    final ones, made of all bins' leftovers (:func:`~ndkd.data.sampling.grouped_order`).
    The batch count and :meth:`start_at` are unchanged.
    """

    def __init__(
        self,
        dataset: SeededDataset,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        drop_last: bool = False,
        return_indices: bool = False,
        pin_memory: bool | None = None,
        repeated_augmentations: int = 0,
    ):
        if repeated_augmentations < 0:
            raise ValueError(
                f"repeated_augmentations must be non-negative, got {repeated_augmentations}"
            )
        self.batch_size = batch_size
        self.drop_last = drop_last
        shard = {"seed": seed, "rank": rank, "world_size": world_size}
        repeats = max(1, repeated_augmentations)
        ratios = dataset.aspect_ratios()
        self.sampler = (
            EpochShardSampler(len(dataset), repeats=repeats, **shard)
            if ratios is None
            else GroupedShardSampler(
                aspect_ratio_groups(ratios), batch_size, repeats=repeats, **shard
            )
        )
        self.loader = _data_loader(
            dataset.with_seed(seed),
            batch_size,
            self.sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            return_indices=return_indices,
            pin_memory=pin_memory,
            persistent=True,
        )

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation of ``epoch`` for the next iteration."""
        self.sampler.set_epoch(epoch)

    def start_at(self, step: int) -> None:
        """Make the next iteration skip its first ``step`` batches without loading them (to
        resume mid-epoch); later iterations start at batch 0."""
        if not 0 <= step <= len(self):
            raise ValueError(f"step must be in [0, {len(self)}], got {step}")
        self.sampler.skip(min(step * self.batch_size, self.sampler.num_samples))

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        samples = self.sampler.num_samples
        if self.drop_last:
            return samples // self.batch_size
        return math.ceil(samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.loader)


def eval_loader(
    dataset: SeededDataset,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    return_indices: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """Batches ``(images, targets)`` (``+ dataset_indices`` with ``return_indices``) of this
    rank's share of ``dataset``, in dataset order: indices ``rank::world_size``, no padding,
    so over all ranks every sample is seen exactly once (a rank may get one batch fewer
    or none). Workers do not persist; batched by the dataset's ``collate``."""
    check_shard(rank, world_size)
    return _data_loader(
        dataset,
        batch_size,
        range(rank, len(dataset), world_size),
        num_workers=num_workers,
        drop_last=False,
        return_indices=return_indices,
        pin_memory=pin_memory,
        persistent=False,
    )
