"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) as a real,
offline dataset for the demo and tests.

Images are ``float32`` tensors ``[1, 8, 8]`` with values in [0, 1] (the 0..16 gray levels
divided by 16), kept at their native size: small enough that a whole pipeline runs on a
laptop CPU in minutes. The train/test split is fixed: per class, a seeded permutation puts
20% of the images (rounded) in the test split (359 test, 1,438 train images), the same on every
machine and scikit-learn version.
"""

from __future__ import annotations

import numpy as np
import torch

TEST_FRACTION = 0.2
SPLIT_SEED = 0
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)


def read_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``"train"`` or ``"test"`` split: ``float32`` images ``[N, 1, 8, 8]``, ``int64`` labels.

    Raises:
        ValueError: unknown ``split``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r} for digits; expected 'train' or 'test'")
    from sklearn.datasets import load_digits  # heavy (scipy); only this dataset needs it

    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(SPLIT_SEED)
    test_mask = np.zeros(len(labels), dtype=bool)
    for cls in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test_mask[members[: round(TEST_FRACTION * len(members))]] = True
    keep = test_mask if split == "test" else ~test_mask
    pixels = torch.from_numpy(images[keep] / 16.0).float().reshape(-1, *IMAGE_SHAPE)
    return pixels, torch.from_numpy(labels[keep]).long()
