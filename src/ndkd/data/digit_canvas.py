"""Digit canvases: a bundled multi-label task made of scikit-learn's handwritten digits (the
multi-label demo's data).

Each image is a 2x2 grid of 8x8 cells (``float32`` ``[1, 16, 16]``, values in [0, 1]) with 1
to 3 real digit images in random cells, the other cells blank; its target is the set of
digits drawn, multi-hot ``int8`` ``[10]`` (a digit drawn twice is one label). Every pixel
gets Gaussian noise (std :data:`NOISE`, clipped to [0, 1] after). Training canvases are drawn
only from the training split of :func:`ndkd.data.read_digits` and test canvases only from
its test split, so no test digit image is ever seen in training. The images are fixed: the
same on every machine and run.
"""

from __future__ import annotations

import torch

from ndkd.data.digits import IMAGE_SHAPE, read_digits
from ndkd.data.digits import NUM_CLASSES as DIGITS

NUM_CLASSES = DIGITS
CLASSES = [str(digit) for digit in range(DIGITS)]
GRID = 2
"""Cells per side of a canvas."""
MAX_DIGITS = 3
SIZES = {"train": 3000, "test": 1000}
NOISE = 0.3
SEEDS = {"train": 0, "test": 1}
"""Seed of the layout and the noise per split (fixed: the data never change)."""


def read_digit_canvas(split: str, noise: float = NOISE) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"train"`` (3,000) or ``"test"`` (1,000) split: images ``[N, 1, 16, 16]``,
    targets ``int8`` ``[N, 10]``.

    Canvas ``i`` holds a uniform count in ``1..MAX_DIGITS`` of digit images, each drawn
    uniformly from the split, in distinct uniformly drawn cells. ``noise``: the pixel noise
    std (0: the clean canvases; the layout does not depend on it).

    Raises:
        ValueError: unknown ``split``.
    """
    if split not in SIZES:
        raise ValueError(f"unknown split {split!r} for digit_canvas; expected 'train' or 'test'")
    images, labels = read_digits(split)
    size, cells = SIZES[split], GRID * GRID
    generator = torch.Generator().manual_seed(SEEDS[split])
    counts = torch.randint(1, MAX_DIGITS + 1, (size, 1), generator=generator)
    ranks = torch.rand(size, cells, generator=generator).argsort(1).argsort(1)
    occupied = ranks < counts  # [N, cells]: the first `count` cells of a random order
    picks = torch.randint(len(images), (size, cells), generator=generator)
    tiles = images[picks] * occupied[:, :, None, None, None]  # [N, cells, 1, 8, 8]
    height, width = IMAGE_SHAPE[1:]
    canvas = (
        tiles.reshape(size, GRID, GRID, height, width)
        .permute(0, 1, 3, 2, 4)
        .reshape(size, 1, GRID * height, GRID * width)
    )
    drawn = torch.nn.functional.one_hot(labels[picks], DIGITS) * occupied[:, :, None]
    targets = drawn.amax(1).to(torch.int8)
    if noise:
        canvas = (canvas + noise * torch.randn(canvas.shape, generator=generator)).clamp(0, 1)
    return canvas, targets
