"""Data sources: a config's ``data`` section -> the training and evaluation splits.

Every data set named in :mod:`ndkd.data.catalog` is read here; the in-memory sets (CIFAR,
the bundled digit sets) come back as :class:`ImageTensorDataset` with their batched
transform (the CIFAR fast path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ndkd.data.augment import cifar_transform
from ndkd.data.catalog import CATALOG, is_bundled
from ndkd.data.cifar import SPECS, standard_size
from ndkd.data.datasets import ImageTensorDataset, build_dataset


@dataclass
class Splits:
    """The training split (with the training augmentation), the evaluation split, and the
    training images under the evaluation transform (a class-means pass without
    augmentation)."""

    train: ImageTensorDataset
    test: ImageTensorDataset

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    def describe(self, name: str) -> dict[str, Any]:
        """The split sizes and class count, with the standard sizes where the data set has
        them and ``"standard_size": false`` when a split differs (a subset, or other data in
        the same format); a run stores this in its folder."""
        facts: dict[str, Any] = {
            "name": name,
            "num_classes": self.num_classes,
            "train_samples": len(self.train),
            "test_samples": len(self.test),
        }
        if name in SPECS:
            standard = {split: standard_size(name, split) for split in ("train", "test")}
            facts["standard_train_samples"] = standard["train"]
            facts["standard_test_samples"] = standard["test"]
            facts["standard_size"] = (len(self.train), len(self.test)) == (
                standard["train"],
                standard["test"],
            )
        return facts

    def train_without_augmentation(self) -> ImageTensorDataset:
        """The training images with the evaluation transform."""
        train = self.train
        return ImageTensorDataset(
            train.images, train.labels, train.num_classes, self.test.transform
        )


def load_splits(name: str, root: str | os.PathLike[str] | None) -> Splits:
    """Read data set ``name`` (a :data:`~ndkd.data.catalog.CATALOG` key) from ``root``.

    Raises:
        ValueError: unknown ``name``. FileNotFoundError: ``root`` is not a folder.
    """
    if name not in CATALOG:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(CATALOG)}")
    if is_bundled(name):
        return Splits(build_dataset(name, None, "train"), build_dataset(name, None, "test"))
    folder = Path(root) if root is not None else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(
            f"data.root {str(root)!r} does not exist; expected a folder holding the "
            f"{name} data ({CATALOG[name].summary})"
        )
    return Splits(
        build_dataset(name, folder, "train", cifar_transform(name, train=True)),
        build_dataset(name, folder, "test", cifar_transform(name, train=False)),
    )
