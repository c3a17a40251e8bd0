"""Aspect-ratio grouped training batches: one bin per batch, same samples, resumable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ndkd.data.detection import (
    BoxTable,
    DetectionDataset,
    DetectionTransform,
    InMemoryDetectionDataset,
)
from ndkd.data.sampling import (
    EpochShardSampler,
    aspect_ratio_groups,
    epoch_order,
    grouped_order,
    shard_indices,
)
from ndkd.data.streaming import NameBuffer, SeededDataset, TrainLoader

SIZE, BATCH, SEED = 103, 4, 5


class _Ratios(SeededDataset):
    """Sample ``i`` is ``(i, 0)``; its aspect ratio is ``ratios[i]``."""

    def __init__(self, ratios: np.ndarray | None, seed: int = 0):
        super().__init__(DetectionTransform(), seed)
        self.ratios = ratios

    def __len__(self) -> int:
        return 37 if self.ratios is None else len(self.ratios)

    def _sample(self, index: int, rng: np.random.Generator | None) -> tuple[int, int]:
        return index, 0

    def aspect_ratios(self) -> np.ndarray | None:
        return self.ratios


def _ratios() -> np.ndarray:
    return np.random.default_rng(0).choice([0.4, 0.75, 1.0, 1.33, 1.8, 3.0], SIZE)


def _loader(
    rank: int = 0, world_size: int = 1, ratios: np.ndarray | None = None, **kwargs
) -> TrainLoader:
    dataset = _Ratios(_ratios() if ratios is None else ratios)
    return TrainLoader(dataset, BATCH, seed=SEED, rank=rank, world_size=world_size, **kwargs)


def _epoch(loader: TrainLoader, epoch: int) -> list[list[int]]:
    loader.set_epoch(epoch)
    return [batch[0].tolist() for batch in loader]


def _shard(rank: int, world_size: int, epoch: int) -> list[int]:
    return shard_indices(epoch_order(SIZE, SEED, epoch), rank, world_size).tolist()


def test_bins_are_torchvisions():
    edges = 2 ** np.linspace(-1, 1, 7)
    ratios = np.array([0.1, 0.5, 0.6, 1.0, 1.2, 2.0, 9.0])
    expected = [sum(edge <= ratio for edge in edges) for ratio in ratios]  # bisect_right
    assert aspect_ratio_groups(ratios).tolist() == expected == [0, 1, 1, 4, 4, 7, 7]


def test_grouped_order_fills_buffers_in_walk_order():
    groups = np.array([0, 1, 0, 1, 1, 0, 2, 0, 1, 2])
    assert grouped_order(groups, 2).tolist() == [0, 2, 1, 3, 5, 7, 4, 8, 6, 9]
    assert grouped_order(groups, 3).tolist() == [1, 3, 4, 0, 2, 5, 6, 7, 8, 9]
    assert grouped_order(np.zeros(7, dtype=np.int64), 3).tolist() == list(range(7))


@pytest.mark.parametrize("world_size", [1, 3])
def test_batches_hold_one_bin_and_cover_the_shards(world_size):
    groups = aspect_ratio_groups(_ratios())
    covered = []
    for rank in range(world_size):
        loader = _loader(rank, world_size)
        batches = _epoch(loader, 2)
        shard = _shard(rank, world_size, 2)
        assert len(batches) == len(loader) == math.ceil(len(shard) / BATCH)
        assert sorted(i for batch in batches for i in batch) == sorted(shard)
        assert all(len(batch) == BATCH for batch in batches[:-1])
        bins = [len(set(groups[batch].tolist())) for batch in batches]
        # the leftovers (fewer than BATCH per bin) fill only the final batches
        leftovers = math.ceil(sum(np.bincount(groups[shard]) % BATCH) / BATCH)
        assert set(bins[: len(bins) - leftovers]) == {1}
        assert max(bins) > 1  # some final batch does mix bins here
        covered += shard
    assert set(covered) == set(range(SIZE))


def test_same_seed_and_epoch_same_batches_and_start_at_resumes():
    batches = _epoch(_loader(), 3)
    assert _epoch(_loader(), 3) == batches
    assert _epoch(_loader(), 4) != batches
    for step in (0, 1, 7, len(batches)):
        loader = _loader()
        loader.set_epoch(3)
        loader.start_at(step)
        assert [batch[0].tolist() for batch in loader] == batches[step:]
        assert _epoch(loader, 3) == batches  # the next iteration starts at batch 0


def test_drop_last_drops_only_the_short_batch():
    batches = _epoch(_loader(), 1)
    dropped = _loader(drop_last=True)
    assert len(dropped) == SIZE // BATCH
    assert _epoch(dropped, 1) == batches[: SIZE // BATCH]


def test_repeated_augmentation_keeps_its_keys():
    loader = _loader(world_size=2, repeated_augmentations=3)
    plain = EpochShardSampler(SIZE, seed=SEED, world_size=2, repeats=3)
    plain.set_epoch(1)
    loader.set_epoch(1)
    assert sorted(loader.sampler) == sorted(plain)


def test_without_ratios_the_order_is_unchanged():
    loader = TrainLoader(_Ratios(None), BATCH, seed=SEED)
    assert type(loader.sampler) is EpochShardSampler
    loader.set_epoch(1)
    flat = [i for batch in loader for i in batch[0].tolist()]
    assert flat == epoch_order(37, SEED, 1).tolist()


def test_detection_datasets_give_aspect_ratios():
    table = BoxTable.grouped(
        np.zeros(0, dtype=np.int64),
        np.zeros((0, 4)),
        np.zeros(0, dtype=np.int64),
        np.arange(3),
    )
    names = NameBuffer.of(["a.jpg", "b.jpg", "c.jpg"])
    sizes = np.array([[640, 480], [480, 640], [500, 500]])
    dataset = DetectionDataset("root", names, table, DetectionTransform(), image_sizes=sizes)
    assert dataset.aspect_ratios().tolist() == [640 / 480, 480 / 640, 1.0]
    assert dataset.with_seed(1).aspect_ratios().tolist() == [640 / 480, 480 / 640, 1.0]
    assert DetectionDataset("root", names, table, DetectionTransform()).aspect_ratios() is None
    with pytest.raises(ValueError, match="image sizes"):
        DetectionDataset("root", names, table, DetectionTransform(), image_sizes=sizes[:2])


def test_in_memory_sets_are_one_bin_so_keep_their_order():
    table = BoxTable.grouped(
        np.zeros(0, dtype=np.int64), np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.arange(9)
    )
    images = torch.zeros(9, 3, 8, 12, dtype=torch.uint8)
    dataset = InMemoryDetectionDataset(images, table, DetectionTransform(train=True))
    assert dataset.aspect_ratios().tolist() == [1.5] * 9
    loader = TrainLoader(dataset, 4, seed=SEED, return_indices=True)
    loader.set_epoch(2)
    flat = [i for batch in loader for i in batch[2].tolist()]
    assert flat == epoch_order(9, SEED, 2).tolist()
