"""The bundled multi-label digit canvases and the in-memory stack with ``[N, C]`` targets."""

from __future__ import annotations

import functools

import pytest
import torch

from ndkd.data import InMemoryLoader, Splits, build_dataset, read_digits
from ndkd.data.digit_canvas import GRID, MAX_DIGITS, NOISE, SIZES, read_digit_canvas
from ndkd.data.sources import evaluation_loader, load_splits, training_loader

CELL = 8


@functools.cache
def _digit_lookup(split: str) -> dict[bytes, int]:
    """Pixels of every digit image of ``split`` -> its digit (the images are all distinct)."""
    images, labels = read_digits(split)
    lookup = {image.numpy().tobytes(): int(label) for image, label in zip(images, labels)}
    assert len(lookup) == len(images)
    return lookup


def _cells(canvas: torch.Tensor) -> list[torch.Tensor]:
    return [
        canvas[:, row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
        for row in range(GRID)
        for col in range(GRID)
    ]


@pytest.mark.parametrize("split", ["train", "test"])
def test_targets_are_the_digits_drawn_from_the_split(split):
    clean, targets = read_digit_canvas(split, noise=0.0)
    assert clean.shape == (SIZES[split], 1, GRID * CELL, GRID * CELL)
    assert targets.shape == (SIZES[split], 10) and targets.dtype == torch.int8
    own, other = _digit_lookup(split), _digit_lookup("test" if split == "train" else "train")
    assert not set(own) & set(other)  # train and test digit images are disjoint
    counts = []
    for canvas, target in zip(clean, targets):
        reference = torch.zeros(10, dtype=torch.int8)
        drawn = [cell for cell in _cells(canvas) if cell.any()]
        for cell in drawn:
            reference[own[cell.numpy().tobytes()]] = 1  # KeyError: not an image of the split
        assert torch.equal(target, reference)
        counts.append(len(drawn))
    assert set(counts) == set(range(1, MAX_DIGITS + 1))


def test_noise_and_determinism():
    noisy, targets = read_digit_canvas("train")
    again, targets_again = read_digit_canvas("train")
    assert torch.equal(noisy, again) and torch.equal(targets, targets_again)
    clean, clean_targets = read_digit_canvas("train", noise=0.0)
    assert torch.equal(targets, clean_targets)  # the layout does not depend on the noise
    assert noisy.dtype == torch.float32 and 0 <= noisy.min() and noisy.max() <= 1
    difference = (noisy - clean).abs().mean()
    assert 0.5 * NOISE * 0.8 < difference < NOISE  # E|N(0, s)| = 0.8 s, less after clipping
    assert difference < (noisy - clean.roll(1, 0)).abs().mean()  # each over its own canvas
    test = read_digit_canvas("test")[0]
    assert not torch.equal(test, noisy[: len(test)])


def test_splits_describe_and_loaders():
    splits = load_splits("digit_canvas", None)
    assert splits.classes == [str(d) for d in range(10)] and splits.num_classes == 10
    assert splits.in_channels == 1 and splits.ap_definition == "plain"
    facts = splits.describe("digit_canvas")
    assert (facts["train_samples"], facts["test_samples"]) == (SIZES["train"], SIZES["test"])
    assert facts["classes"] == splits.classes and facts["train_images_without_labels"] == 0
    assert "standard_size" not in facts
    plain = splits.train_without_augmentation()
    assert torch.equal(plain.labels, splits.train.labels)
    images, targets = plain[3]
    assert images.shape == (1, 16, 16) and torch.equal(targets, splits.train.labels[3])
    loader = training_loader(splits.train, 256, seed=0, return_indices=True)
    assert isinstance(loader, InMemoryLoader)
    seen = []
    for images, targets, index in loader:
        assert images.shape == (len(index), 1, 16, 16)
        assert targets.dtype == torch.int8 and targets.shape == (len(index), 10)
        assert torch.equal(targets, splits.train.labels[index])
        seen += index.tolist()
    assert sorted(seen) == list(range(SIZES["train"]))
    shards = [
        torch.cat([t for _, t in evaluation_loader(splits.test, 100, rank=r, world_size=3)])
        for r in range(3)
    ]
    for rank, shard in enumerate(shards):
        assert torch.equal(shard, splits.test.labels[rank::3])


def test_in_memory_splits_take_multi_hot_targets():
    splits = Splits(build_dataset("digit_canvas", None, "train"), build_dataset("digit_canvas"))
    assert splits.num_classes == 10 and splits.in_channels == 1
    assert splits.describe("digit_canvas")["train_samples"] == SIZES["train"]
    assert torch.equal(splits.train_without_augmentation().labels, splits.train.labels)
    with pytest.raises(ValueError, match="labels \\[N\\] or \\[N, num_classes\\]"):
        type(splits.train)(splits.train.images, splits.train.labels, 9)
