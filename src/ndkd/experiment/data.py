"""The data of a run: splits from the data source, loaders sharded over processes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ndkd.config import RunConfig
from ndkd.data import ImageTensorDataset, InMemoryLoader, Splits, load_splits
from ndkd.engine.distributed import DistInfo

PROBE_BATCH = 2


@dataclass
class RunData:
    """A run's splits and the loaders over this process's share of them."""

    splits: Splits
    train_loader: InMemoryLoader
    test_loader: InMemoryLoader

    @property
    def num_classes(self) -> int:
        return self.splits.num_classes

    @property
    def in_channels(self) -> int:
        return self.splits.in_channels

    @property
    def train_size(self) -> int:
        return len(self.splits.train)

    def probe_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A tiny transformed training batch for sizing a method's modules."""
        train = self.splits.train
        images = train.images[:PROBE_BATCH].to(device)
        if train.transform is not None:
            images = train.transform(images)
        return images, train.labels[:PROBE_BATCH].to(device)


def per_process_batch(config: RunConfig, dist: DistInfo) -> int:
    """``train.batch_size`` is the total over processes; each takes an equal share."""
    total = config.train.batch_size
    if total % dist.world_size:
        raise ValueError(
            f"train.batch_size={total} must divide evenly over {dist.world_size} processes"
        )
    return total // dist.world_size


def shard(dataset: ImageTensorDataset, dist: DistInfo) -> ImageTensorDataset:
    """This process's share of an evaluation set: every sample exactly once over processes."""
    if not dist.enabled:
        return dataset
    part = slice(dist.rank, None, dist.world_size)
    return ImageTensorDataset(
        dataset.images[part], dataset.labels[part], dataset.num_classes, dataset.transform
    )


def build_data(config: RunConfig, dist: DistInfo, device: torch.device) -> RunData:
    """Read the data set and make the training and evaluation loaders of this process."""
    splits = load_splits(config.data.name, config.data.root)
    batch = per_process_batch(config, dist)
    resident = device if config.data.resident else None
    train_loader = InMemoryLoader(
        splits.train,
        batch,
        shuffle=True,
        drop_last=False,
        device=resident,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    test_loader = InMemoryLoader(shard(splits.test, dist), batch, device=resident)
    return RunData(splits, train_loader, test_loader)


def centers_loader(
    config: RunConfig, splits: Splits, dist: DistInfo, device: torch.device
) -> InMemoryLoader:
    """One pass over this process's share of the training set for class means, with or
    without the training augmentation (``centers.transform``)."""
    dataset = (
        splits.train
        if config.centers.transform == "train"
        else (splits.train_without_augmentation())
    )
    resident = device if config.data.resident else None
    return InMemoryLoader(
        shard(dataset, dist), config.train.batch_size, seed=config.seed, device=resident
    )
