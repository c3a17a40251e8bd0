"""Noisy pairs of scikit-learn's handwritten digits: a bundled 100-class task that is hard
enough for a real teacher/student gap (the demo's data).

Plain 8x8 digits are too easy for a gap to show (a small CNN reaches ~98%). Here each image
is two real digits side by side (``float32`` ``[1, 8, 16]``, values in [0, 1]), the label is
the two-digit number they read (``10 * left + right``, 100 classes, like CIFAR-100), every
pixel gets Gaussian noise (std 0.5, clipped to [0, 1] after), and the training set is small
(30 images per class). Training pairs are drawn only from the training split of
:func:`ndkd.data.read_digits` and test pairs only from its test split, so no test digit
image is ever seen in training. The images are fixed: the same on every machine and run.
"""

from __future__ import annotations

import torch

from ndkd.data.digits import NUM_CLASSES as DIGITS
from ndkd.data.digits import read_digits

NUM_CLASSES = DIGITS * DIGITS
SIZES = {"train": 3000, "test": 2000}
NOISE = 0.5
SEEDS = {"train": 0, "test": 1}
"""Seed of the pairing and the noise per split (fixed: the data never change)."""


def read_digit_pairs(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"train"`` (3,000) or ``"test"`` (2,000) split: images ``[N, 1, 8, 16]``, labels.

    Sample ``i`` has class ``i % 100``: a random image of digit ``class // 10`` on the left,
    a random image of digit ``class % 10`` on the right.

    Raises:
        ValueError: unknown ``split``.
    """
    if split not in SIZES:
        raise ValueError(f"unknown split {split!r} for digit_pairs; expected 'train' or 'test'")
    images, labels = read_digits(split)
    generator = torch.Generator().manual_seed(SEEDS[split])
    classes = torch.arange(SIZES[split]) % NUM_CLASSES
    left = _pick(labels, classes // DIGITS, generator)
    right = _pick(labels, classes % DIGITS, generator)
    pairs = torch.cat([images[left], images[right]], dim=3)
    pairs = pairs + NOISE * torch.randn(pairs.shape, generator=generator)
    return pairs.clamp(0.0, 1.0), classes


def _pick(labels: torch.Tensor, digits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For every wanted digit, the index of a uniformly drawn image of that digit."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=DIGITS)
    starts = torch.cumsum(counts, 0) - counts
    draws = torch.rand(len(digits), generator=generator)
    offsets = (draws * counts[digits]).long().clamp_max(counts[digits] - 1)
    return order[starts[digits] + offsets]
