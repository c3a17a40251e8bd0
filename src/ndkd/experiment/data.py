"""The data of a run: splits from the data source, loaders over this process's share."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ndkd.config import RunConfig
from ndkd.data.imagefolder import ImageFolderSplits
from ndkd.data.sources import (
    Splits,
    evaluation_loader,
    load_splits,
    probe_detection,
    probe_images,
    training_loader,
)
from ndkd.data.views import TwoViewDataset, image_folder_views
from ndkd.engine.distributed import DistInfo

PROBE_BATCH = 2


@dataclass
class RunData:
    """A run's splits and the loaders over this process's share of them."""

    splits: Any
    """``ndkd.data.Splits`` (in-memory sets) or ``ImageFolderSplits`` (image folders)."""
    train_loader: Any
    test_loader: Iterable

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    @property
    def in_channels(self) -> int:
        return self.splits.in_channels

    @property
    def train_size(self) -> int:
        return len(self.splits.train)

    def probe_batch(self, device: torch.device) -> tuple[Any, ...]:
        """A tiny transformed training batch, as the training loader yields it, for sizing a
        method's modules: ``(images, labels)``, or for detection sets (whose loaders collate
        lists) ``(images, targets)`` as tuples."""
        train = self.splits.train
        if getattr(train, "collate", None) is not None:
            images, targets = probe_detection(train, PROBE_BATCH, device)
            return tuple(images), tuple(targets)
        return probe_images(train, PROBE_BATCH, device), train.labels[:PROBE_BATCH].to(device)


def per_process_batch(config: RunConfig, dist: DistInfo) -> int:
    """``train.batch_size`` is the total over processes; each takes an equal share."""
    total = config.train.batch_size
    if total % dist.world_size:
        raise ValueError(
            f"train.batch_size={total} must divide evenly over {dist.world_size} processes"
        )
    return total // dist.world_size


def _resident(config: RunConfig, device: torch.device) -> torch.device | None:
    return device if config.data.resident else None


def train_loader_of(
    config: RunConfig, data: RunData, dist: DistInfo, device: torch.device, indices: bool
) -> Any:
    """The training loader of this process (``indices``: also yield dataset indices).

    With ``data.strong_view`` it yields two views of each image
    (:class:`~ndkd.data.views.TwoViewDataset` over ``splits.train``, streamed with
    ``data.num_workers`` workers); ``splits.train`` itself stays the one-view set that
    class means, probes and evaluation read."""
    return training_loader(
        training_set(config, data.splits),
        per_process_batch(config, dist),
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        resident=_resident(config, device),
        num_workers=config.data.num_workers,
        return_indices=indices,
        repeated_augmentations=config.data.repeated_augmentations,
    )


def training_set(config: RunConfig, splits: Any) -> Any:
    """The data set the training loader reads: ``splits.train``, or its two views."""
    if not config.data.strong_view:
        return splits.train
    if isinstance(splits, ImageFolderSplits):
        return image_folder_views(splits.train, config.data.strong_view)
    if not isinstance(splits, Splits):
        raise ValueError(
            f"data.strong_view: two views serve the single-label sets (CIFAR, digits, image "
            f"folders), not {config.data.name}"
        )
    return TwoViewDataset(splits.train, config.data.strong_view)


def build_data(config: RunConfig, dist: DistInfo, device: torch.device) -> RunData:
    """Read the data set and make the training and evaluation loaders of this process."""
    data = config.data
    splits = load_splits(
        data.name,
        data.root,
        data.image_size,
        data.eval_resize,
        rand_augment=data.rand_augment,
        random_erasing=data.random_erasing,
    )
    test_loader = evaluation_loader(
        splits.test,
        per_process_batch(config, dist),
        rank=dist.rank,
        world_size=dist.world_size,
        resident=_resident(config, device),
        num_workers=data.num_workers,
    )
    run = RunData(splits, None, test_loader)
    run.train_loader = train_loader_of(config, run, dist, device, indices=False)
    return run


def centers_loader(config: RunConfig, splits: Any, dist: DistInfo, device: torch.device):
    """One pass over this process's share of the training set for class means, with or
    without the training augmentation (``centers.transform``)."""
    augmented = config.centers.transform == "train"
    dataset = splits.train if augmented else splits.train_without_augmentation()
    return evaluation_loader(
        dataset,
        config.train.batch_size,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
        resident=_resident(config, device),
        num_workers=config.data.num_workers,
    )
