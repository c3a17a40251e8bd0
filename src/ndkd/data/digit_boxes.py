"""Digit boxes: a bundled detection set made of scikit-learn's handwritten digits (the
detection demo's data and the tests').

Each image is an RGB canvas of :data:`CANVAS` pixels squared (``uint8`` ``[3, 64, 64]``) made
of 2x2 cells of :data:`CELL` pixels; 1 to :data:`MAX_DIGITS` distinct cells hold one real
8x8 digit image each, upscaled (nearest) to a side uniform in :data:`SCALES`, at a uniform
position inside its cell (so digits never overlap), in one colour (channels uniform in
[:data:`MIN_COLOUR`, 1]). A digit's box is the extent of its non-zero pixels, its label the
digit + 1 (classes ``"0"``..``"9"``). Every pixel then gets Gaussian noise (std
:data:`NOISE`, clipped to [0, 1]; the layout does not depend on it). Training canvases are
drawn only from the training split of :func:`ndkd.data.read_digits` and test canvases only
from its test split, so no test digit image is ever seen in training. Image ids are
``1..N``. The images are fixed: the same on every machine and run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ndkd.data.detection import (
    BACKGROUND,
    BoxTable,
    DetectionSplits,
    DetectionTransform,
    GroundTruth,
    InMemoryDetectionDataset,
)
from ndkd.data.digits import IMAGE_SHAPE, NUM_CLASSES, read_digits

CLASSES = [str(digit) for digit in range(NUM_CLASSES)]
GRID = 2
"""Cells per side of a canvas."""
CELL = 32
CANVAS = GRID * CELL
SCALES = (12, 32)
"""The smallest and largest side of a placed digit (pixels, both included)."""
MAX_DIGITS = 4
MIN_COLOUR = 0.25
SIZES = {"train": 1000, "test": 200}
NOISE = 0.1
SEEDS = {"train": 0, "test": 1}
"""Seed of the layout and the noise per split (fixed: the data never change)."""


@dataclass(frozen=True)
class DigitBoxes:
    """One split: the ``uint8`` canvases ``[N, 3, 64, 64]``, their boxes, and per box the
    index of its digit image in :func:`~ndkd.data.digits.read_digits` of the split
    (``sources``) and the side it was upscaled to (``scales``)."""

    images: torch.Tensor
    table: BoxTable
    sources: np.ndarray
    scales: np.ndarray


def _extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last true position of every row of ``mask`` ``[M, L]`` (each
    row has one)."""
    flags = mask.to(torch.uint8)
    return flags.argmax(1), mask.shape[1] - flags.flip(1).argmax(1)


def read_digit_boxes(split: str, noise: float = NOISE) -> DigitBoxes:
    """The ``"train"`` (1,000) or ``"test"`` (200) split (module docstring). ``noise``: the
    pixel noise std (0: the clean canvases).

    Raises:
        ValueError: unknown ``split``.
    """
    if split not in SIZES:
        raise ValueError(f"unknown split {split!r} for digit_boxes; expected 'train' or 'test'")
    digits, digit_labels = read_digits(split)
    size, cells, side = SIZES[split], GRID * GRID, IMAGE_SHAPE[-1]
    generator = torch.Generator().manual_seed(SEEDS[split])
    counts = torch.randint(1, MAX_DIGITS + 1, (size, 1), generator=generator)
    ranks = torch.rand(size, cells, generator=generator).argsort(1).argsort(1)
    occupied = ranks < counts  # the first `count` cells of a random order
    picks = torch.randint(len(digits), (size, cells), generator=generator)
    scales = torch.randint(SCALES[0], SCALES[1] + 1, (size, cells), generator=generator)
    room = (CELL - scales + 1)[..., None]
    corners = (torch.rand(size, cells, 2, generator=generator) * room).long()  # (y, x) in cell
    colours = MIN_COLOUR + (1 - MIN_COLOUR) * torch.rand(size, cells, 3, generator=generator)
    image, cell = occupied.nonzero(as_tuple=True)  # by image, then cell
    picks, scales, corners = picks[image, cell], scales[image, cell], corners[image, cell]
    # Nearest upscaling: cell pixel p shows source pixel (p - corner) * 8 // scale.
    offsets = torch.arange(CELL) - corners[..., None]  # [M, 2, CELL]
    inside = (offsets >= 0) & (offsets < scales[:, None, None])
    source = (offsets.clamp(min=0) * side // scales[:, None, None]).clamp(max=side - 1)
    rows, cols = source[:, 0, :, None], source[:, 1, None, :]
    tiles = digits[picks, 0][torch.arange(len(picks))[:, None, None], rows, cols]
    tiles = tiles * (inside[:, 0, :, None] & inside[:, 1, None, :])  # [M, CELL, CELL]
    (y1, y2), (x1, x2) = _extent(tiles.gt(0).any(2)), _extent(tiles.gt(0).any(1))
    top, left = (cell // GRID) * CELL, (cell % GRID) * CELL
    boxes = torch.stack([left + x1, top + y1, left + x2, top + y2], 1)
    layer = torch.zeros(size, cells, 3, CELL, CELL)
    layer[image, cell] = tiles[:, None] * colours[image, cell][:, :, None, None]
    canvas = (
        layer.view(size, GRID, GRID, 3, CELL, CELL)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(size, 3, CANVAS, CANVAS)
    )
    if noise:
        canvas = (canvas + noise * torch.randn(canvas.shape, generator=generator)).clamp(0, 1)
    table = BoxTable.grouped(
        image.numpy(),
        boxes.numpy(),
        (digit_labels[picks] + 1).numpy(),
        np.arange(1, size + 1, dtype=np.int64),
    )
    pixels = canvas.mul(255).round().to(torch.uint8)
    return DigitBoxes(pixels, table, picks.numpy(), scales.numpy())


def digit_box_splits() -> DetectionSplits:
    """Both splits as in-memory detection sets, the test split's ground truth built from
    its boxes (category id = label)."""
    train, test = read_digit_boxes("train"), read_digit_boxes("test")
    categories = list(enumerate(CLASSES, start=1))
    return DetectionSplits(
        [BACKGROUND, *CLASSES],
        InMemoryDetectionDataset(train.images, train.table, DetectionTransform(train=True)),
        InMemoryDetectionDataset(test.images, test.table, DetectionTransform()),
        GroundTruth.of_table(test.table, np.full((len(test.table), 2), CANVAS), categories),
        list(range(len(CLASSES) + 1)),
    )
