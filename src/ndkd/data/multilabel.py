"""Multi-label image sets (a set of classes per image): the dataset, its transform, splits.

A sample is ``(image [3, S, S] float32, target [C] int8)`` with target values
:data:`PRESENT` (1), :data:`ABSENT` (0) and :data:`DIFFICULT` (-1: the class appears only in
objects marked difficult; PASCAL VOC). The images stream from disk through
:class:`~ndkd.data.streaming.StreamingDataset` (the ImageNet loaders, per-sample seeding).

Transforms (the public LSHFM multi-label code, for VOC2007 and COCO2014): training is
Resize((S, S)) (squashed to a square, no crop) + horizontal flip + ColorJitter(brightness,
contrast, saturation 0.3, no hue) on the ``uint8`` tensor
(``torchvision.transforms.v2.functional``); evaluation is Resize((S, S)); both end in
ToDtype(float32, scale) + Normalize(ImageNet mean/std). The flip, the three jitter factors
(uniform in [0.7, 1.3]) and the jitter order come from the sample's generator, seeded by
``(seed, epoch, index)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from ndkd.data.datasets import ImageTensorDataset
from ndkd.data.streaming import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NameBuffer,
    StreamingDataset,
    normalize_image,
)

PRESENT, ABSENT, DIFFICULT = 1, 0, -1
AP_DEFINITIONS = ("interpolated", "plain")
"""``interpolated``: PASCAL VOC's all-point interpolated AP; ``plain``: non-interpolated AP
(the mean of the precisions at the ranks of the positives)."""
_JITTER = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)


@dataclass(frozen=True)
class SquareTransform:
    """One ``uint8`` image ``[3, H, W]`` -> normalized ``float32`` ``[3, S, S]``: resized to
    ``image_size`` squared; in training then flipped with probability 1/2 and color-jittered
    (brightness, contrast, saturation factors uniform in ``[1 - jitter, 1 + jitter]``,
    applied in a random order), all drawn from ``rng``.

    Raises:
        ValueError: ``image_size`` below 1 or ``jitter`` outside [0, 1].
    """

    image_size: int = 448
    train: bool = False
    jitter: float = 0.3
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    _mean: torch.Tensor = field(init=False, repr=False, compare=False)
    _std: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")
        object.__setattr__(self, "_mean", torch.tensor(self.mean).view(3, 1, 1))
        object.__setattr__(self, "_std", torch.tensor(self.std).view(3, 1, 1))

    def __call__(self, image: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        image = F.resize(image, [self.image_size, self.image_size], antialias=True)
        if self.train:
            if rng is None:
                raise ValueError("the training transform needs a generator")
            flip, *uniforms = rng.random(4).tolist()
            if flip < 0.5:
                image = F.horizontal_flip(image)
            for op in rng.permutation(len(_JITTER)).tolist():
                image = _JITTER[op](image, 1.0 + self.jitter * (2.0 * uniforms[op] - 1.0))
        return normalize_image(image, self._mean, self._std)


@dataclass(frozen=True)
class LabelledFiles:
    """The images of one split: ``folder/<name><suffix>`` files (names in one buffer) and
    their targets, ``int8`` ``[N, C]``."""

    folder: str
    names: NameBuffer
    targets: np.ndarray
    suffix: str = ""

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, index: int) -> str:
        return os.path.join(self.folder, self.names[index] + self.suffix)


class MultiLabelDataset(StreamingDataset):
    """One split of a multi-label image set: ``dataset[key]`` is ``(image [3, S, S]
    float32, target [C] int8)`` (``key``: :class:`~ndkd.data.streaming.StreamingDataset`)."""

    def __init__(
        self,
        files: LabelledFiles,
        classes: list[str],
        transform: SquareTransform,
        seed: int = 0,
    ):
        if files.targets.shape[1:] != (len(classes),):
            raise ValueError(
                f"targets [N, {len(classes)}] expected for {len(classes)} classes, got "
                f"{list(files.targets.shape)}"
            )
        super().__init__(transform, seed)
        self.files = files
        self.classes = list(classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> torch.Tensor:
        """Every sample's target, ``int8`` ``[N, C]`` (shares the listing's memory)."""
        return torch.from_numpy(self.files.targets)

    def __len__(self) -> int:
        return len(self.files)

    def _file(self, index: int) -> str:
        return self.files.path(index)

    def _target(self, index: int) -> torch.Tensor:
        return torch.tensor(self.files.targets[index])


@dataclass
class MultiLabelSplits:
    """Both splits of a multi-label set, on disk (:class:`MultiLabelDataset`) or in memory
    (:class:`~ndkd.data.datasets.ImageTensorDataset` with ``[N, C]`` targets).

    ``ap_definition``: the average precision the set is reported with
    (:data:`AP_DEFINITIONS`); ``without_labels``: images dropped per split (``"train"``,
    ``"test"``) for having no labelled object; ``standard``: the standard
    ``(train, test)`` sizes, if the set has them.
    """

    classes: list[str]
    train: MultiLabelDataset | ImageTensorDataset
    test: MultiLabelDataset | ImageTensorDataset
    ap_definition: str
    in_channels: int = 3
    without_labels: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    standard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.ap_definition not in AP_DEFINITIONS:
            raise ValueError(
                f"ap_definition must be one of {AP_DEFINITIONS}, got {self.ap_definition!r}"
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def train_without_augmentation(self) -> MultiLabelDataset | ImageTensorDataset:
        """The training images under the evaluation transform."""
        return self.train.with_transform(self.test.transform)

    def describe(self, name: str) -> dict[str, Any]:
        """Classes, split sizes, images dropped for having no labels and the AP definition
        (stored in the run folder); with standard sizes also those and ``standard_size``."""
        facts: dict[str, Any] = {
            "name": name,
            "num_classes": self.num_classes,
            "train_samples": len(self.train),
            "test_samples": len(self.test),
            "train_images_without_labels": self.without_labels["train"],
            "test_images_without_labels": self.without_labels["test"],
            "ap_definition": self.ap_definition,
            "classes": list(self.classes),
        }
        if self.standard is not None:
            facts["standard_train_samples"], facts["standard_test_samples"] = self.standard
            facts["standard_size"] = (len(self.train), len(self.test)) == self.standard
        return facts


def disk_splits(
    classes: list[str],
    train: LabelledFiles,
    test: LabelledFiles,
    image_size: int,
    *,
    ap_definition: str,
    without_labels: dict[str, int],
    standard: tuple[int, int],
) -> MultiLabelSplits:
    """The splits of a multi-label set on disk, with the training and evaluation
    :class:`SquareTransform` of ``image_size``."""
    transform = SquareTransform(image_size, train=True)
    return MultiLabelSplits(
        classes,
        MultiLabelDataset(train, classes, transform),
        MultiLabelDataset(test, classes, SquareTransform(image_size)),
        ap_definition,
        without_labels=without_labels,
        standard=standard,
    )
