"""Object detection data: boxes per image, the samples, the flip, the collate and the splits.

A sample is ``(image, target)``: ``image`` ``float32`` ``[3, H, W]`` in [0, 1] at the size
it has (neither normalized nor resized: torchvision's detector transform does both) and
``target`` a dict with ``"boxes"`` ``float32`` ``[K, 4]`` (x1, y1, x2, y2 in pixels of that
image; a box covering pixel columns ``a..b`` has ``x1 = a``, ``x2 = b + 1``), ``"labels"``
``int64`` ``[K]`` in ``1..C`` (0 is the background, never a label) and ``"image_id"``
``int64`` (0-d). Training flips an image and its boxes horizontally with probability 1/2,
drawn from the sample's generator (seeded by ``(seed, epoch, index)``,
:class:`~ndkd.data.streaming.SeededDataset`); evaluation does not. The loaders batch
samples with :func:`collate_detection` into tuples (images of different sizes); a split
that knows its image sizes (:meth:`~ndkd.data.streaming.SeededDataset.aspect_ratios`) is
trained on batches of one aspect-ratio bin (:class:`~ndkd.data.streaming.TrainLoader`).

The boxes of a split are packed in arrays (:class:`BoxTable`), so worker processes share
them without per-image Python objects; the evaluation split's ground truth in COCO's format
(:class:`GroundTruth`) is what COCO's evaluation reads.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ndkd.data.streaming import NameBuffer, SeededDataset, StreamingDataset, decode_image

BACKGROUND = "__background__"
"""The name of class 0 (torchvision's detectors count the background as a class)."""

Target = dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------
# Boxes


@dataclass(frozen=True)
class BoxTable:
    """The boxes of ``N`` images, packed: ``boxes`` ``float32`` ``[M, 4]`` (x1, y1, x2, y2),
    ``labels`` ``int64`` ``[M]`` (``1..C``), image ``i``'s boxes being rows
    ``offsets[i]:offsets[i + 1]`` (``offsets`` ``int64`` ``[N + 1]``), and ``image_ids``
    ``int64`` ``[N]``."""

    boxes: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    image_ids: np.ndarray

    @classmethod
    def grouped(
        cls, rows: np.ndarray, boxes: np.ndarray, labels: np.ndarray, image_ids: np.ndarray
    ) -> BoxTable:
        """The table of boxes ``boxes`` with ``labels`` of images ``rows`` (indices into
        ``image_ids``; any order, kept within an image)."""
        order = np.argsort(rows, kind="stable")
        counts = np.bincount(rows, minlength=len(image_ids))
        return cls(
            boxes[order].astype(np.float32),
            labels[order].astype(np.int64),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            image_ids.astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def counts(self) -> np.ndarray:
        """Boxes per image, ``int64`` ``[N]``."""
        return np.diff(self.offsets)

    def subset(self, keep: np.ndarray) -> BoxTable:
        """The images where ``keep`` (``bool`` ``[N]``) holds, with their boxes."""
        counts = self.counts()
        rows = np.repeat(keep, counts)
        kept = np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64)
        return BoxTable(self.boxes[rows], self.labels[rows], kept, self.image_ids[keep])

    def target(self, index: int) -> Target:
        """The target of image ``index`` (fresh tensors)."""
        start, end = self.offsets[index], self.offsets[index + 1]
        return {
            "boxes": torch.tensor(self.boxes[start:end]),
            "labels": torch.tensor(self.labels[start:end]),
            "image_id": torch.tensor(self.image_ids[index]),
        }


@dataclass(frozen=True)
class GroundTruth:
    """A split's ground truth in COCO's annotation format, as arrays: ``N`` images
    (``image_ids``, ``image_sizes`` ``[N, 2]`` as width, height) and ``M`` annotations
    (``annotation_ids``, the ``annotation_images`` and ``annotation_categories`` ids they
    have, ``bboxes`` ``[M, 4]`` as x, y, width, height, ``areas``, ``crowd`` flags), the
    ``(id, name)`` categories and, where the set has them, ``difficult`` flags ``[M]``
    (written as each annotation's ``difficult``: the VOC 2007 metric ignores those boxes,
    COCO's evaluation reads only ``iscrowd``)."""

    image_ids: np.ndarray
    image_sizes: np.ndarray
    annotation_ids: np.ndarray
    annotation_images: np.ndarray
    annotation_categories: np.ndarray
    bboxes: np.ndarray
    areas: np.ndarray
    crowd: np.ndarray
    categories: list[tuple[int, str]]
    difficult: np.ndarray | None = None

    @classmethod
    def of_table(
        cls,
        table: BoxTable,
        image_sizes: np.ndarray,
        categories: list[tuple[int, str]],
        difficult: np.ndarray | None = None,
    ) -> GroundTruth:
        """The ground truth of ``table``'s boxes: category id = label, annotation ids
        ``1..M``, areas of the boxes, no crowds; ``difficult``: flags of the boxes in the
        table's order."""
        corners = table.boxes.astype(np.float64)
        bboxes = np.concatenate([corners[:, :2], corners[:, 2:] - corners[:, :2]], axis=1)
        boxes = len(table.labels)
        return cls(
            table.image_ids,
            image_sizes,
            np.arange(1, boxes + 1, dtype=np.int64),
            np.repeat(table.image_ids, table.counts()),
            table.labels,
            bboxes,
            bboxes[:, 2] * bboxes[:, 3],
            np.zeros(boxes, dtype=np.int64),
            categories,
            difficult,
        )

    def coco(self) -> dict[str, list[dict[str, Any]]]:
        """A fresh COCO-format dict (``images``, ``annotations``, ``categories``) for
        ``pycocotools.coco.COCO`` (set ``dataset``, call ``createIndex()``); annotations
        carry ``difficult`` (0 or 1) where the ground truth has the flags."""
        images = [
            {"id": image, "width": width, "height": height}
            for image, (width, height) in zip(self.image_ids.tolist(), self.image_sizes.tolist())
        ]
        annotations = [
            {"id": a, "image_id": i, "category_id": c, "bbox": b, "area": area, "iscrowd": crowd}
            for a, i, c, b, area, crowd in zip(
                self.annotation_ids.tolist(),
                self.annotation_images.tolist(),
                self.annotation_categories.tolist(),
                self.bboxes.tolist(),
                self.areas.tolist(),
                self.crowd.tolist(),
            )
        ]
        if self.difficult is not None:
            for annotation, flag in zip(annotations, self.difficult.tolist()):
                annotation["difficult"] = int(flag)
        categories = [{"id": id_, "name": name} for id_, name in self.categories]
        return {"images": images, "annotations": annotations, "categories": categories}


# ---------------------------------------------------------------------------------------
# Transform and batching


def horizontal_flip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """``image`` ``[C, H, W]`` mirrored left to right, and ``target`` with its boxes
    mirrored: ``(x1, x2) -> (W - x2, W - x1)``."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}


@dataclass(frozen=True)
class DetectionTransform:
    """``uint8`` image ``[3, H, W]`` and its target -> ``float32`` image in [0, 1] (as
    ``v2.ToDtype(float32, scale=True)``) and the target; in training both flipped
    horizontally with probability 1/2, drawn from ``rng``."""

    train: bool = False

    def __call__(
        self, image: torch.Tensor, target: Target, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, Target]:
        pixels = torch.empty(image.shape, dtype=torch.float32).copy_(image).mul_(1.0 / 255)
        if not self.train:
            return pixels, target
        if rng is None:
            raise ValueError("the training transform needs a generator")
        return horizontal_flip(pixels, target) if rng.random() < 0.5 else (pixels, target)


def collate_detection(batch: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """``[(image, target), ...]`` -> ``(images, targets)``, tuples of the samples' own
    (images of different sizes); samples with a dataset index as third item add
    ``indices`` ``int64`` ``[B]``."""
    images, targets, *indices = zip(*batch)
    return (images, targets, *(torch.tensor(column, dtype=torch.int64) for column in indices))


# ---------------------------------------------------------------------------------------
# Datasets


class BoxDataset(SeededDataset):
    """A detection split: ``dataset[key]`` is ``(image [3, H, W] float32, target)`` (module
    docstring; ``key`` and the seeding: :class:`~ndkd.data.streaming.SeededDataset`), the
    targets from :attr:`table`, the transform a :class:`DetectionTransform`. Subclasses give
    each sample's ``uint8`` image."""

    collate = staticmethod(collate_detection)
    table: BoxTable

    def __len__(self) -> int:
        return len(self.table)

    @abstractmethod
    def _image(self, index: int) -> torch.Tensor:
        """The ``uint8`` image ``[3, H, W]`` of sample ``index`` (in range)."""

    def _sample(self, index: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, Target]:
        return self.transform(self._image(index), self.table.target(index), rng)


class DetectionDataset(BoxDataset, StreamingDataset):
    """A detection split on disk: image ``i`` is the file ``folder/names[i]``;
    ``image_sizes``: the images' ``[N, 2]`` (width, height), if known (e.g.
    :attr:`GroundTruth.image_sizes`), for aspect-ratio grouping."""

    def __init__(
        self,
        folder: str,
        names: NameBuffer,
        table: BoxTable,
        transform: DetectionTransform,
        seed: int = 0,
        image_sizes: np.ndarray | None = None,
    ):
        if len(names) != len(table):
            raise ValueError(f"{len(names)} file names for {len(table)} images")
        if image_sizes is not None and np.shape(image_sizes) != (len(table), 2):
            raise ValueError(
                f"expected image sizes [{len(table)}, 2], got {list(np.shape(image_sizes))}"
            )
        super().__init__(transform, seed)
        self.folder = folder
        self.names = names
        self.table = table
        self.image_sizes = image_sizes

    def _file(self, index: int) -> str:
        return os.path.join(self.folder, self.names[index])

    def _target(self, index: int) -> Target:
        return self.table.target(index)

    def _image(self, index: int) -> torch.Tensor:
        return decode_image(self._file(index))

    def aspect_ratios(self) -> np.ndarray | None:
        """Width / height of each image (``None`` without ``image_sizes``)."""
        if self.image_sizes is None:
            return None
        sizes = np.asarray(self.image_sizes, dtype=np.float64)
        return sizes[:, 0] / sizes[:, 1]


class InMemoryDetectionDataset(BoxDataset):
    """A detection split held as one ``uint8`` tensor of images ``[N, 3, H, W]``."""

    def __init__(
        self, images: torch.Tensor, table: BoxTable, transform: DetectionTransform, seed: int = 0
    ):
        if images.dim() != 4 or images.dtype != torch.uint8 or len(images) != len(table):
            raise ValueError(
                f"expected uint8 images [{len(table)}, 3, H, W], got {images.dtype} "
                f"{list(images.shape)}"
            )
        super().__init__(transform, seed)
        self.images = images
        self.table = table

    def _image(self, index: int) -> torch.Tensor:
        return self.images[index]

    def aspect_ratios(self) -> np.ndarray:
        """Width / height of each image (all the same)."""
        height, width = self.images.shape[-2:]
        return np.full(len(self), width / height)


# ---------------------------------------------------------------------------------------
# Splits


@dataclass
class DetectionSplits:
    """Both splits of a detection set.

    ``classes``: :data:`BACKGROUND` then the ``C`` object classes (label ``l`` is
    ``classes[l]``); ``category_ids[l]``: the ground truth's category id of label ``l``
    (``category_ids[0]``, 0, is unused); ``truth``: the evaluation split's ground truth;
    ``images_left_out``: training images dropped for having no box; ``boxes_left_out``:
    annotations per split (``"train"``, ``"test"``) not in the targets (crowds, difficult
    objects, boxes without area); ``standard``: the standard ``(train, test)`` sizes, if the
    set has them; ``metric``: the evaluation the set is reported with, ``"coco"`` (COCO AP)
    or ``"voc07"`` (VOC 2007 11-point mAP), for the detection task; ``notes``: set-specific
    facts :meth:`describe` adds (e.g. how image ids are made).
    """

    classes: list[str]
    train: BoxDataset
    test: BoxDataset
    truth: GroundTruth
    category_ids: list[int]
    images_left_out: int = 0
    boxes_left_out: dict[str, int] = field(default_factory=lambda: {"train": 0, "test": 0})
    standard: tuple[int, int] | None = None
    in_channels: int = 3
    metric: str = "coco"
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.classes[:1] != [BACKGROUND] or len(self.category_ids) != len(self.classes):
            raise ValueError(
                f"classes must start with {BACKGROUND!r} and match category_ids, got "
                f"{len(self.classes)} classes starting {self.classes[:1]} and "
                f"{len(self.category_ids)} category ids"
            )

    @property
    def num_classes(self) -> int:
        """``C + 1``: the object classes and the background."""
        return len(self.classes)

    def train_without_augmentation(self) -> BoxDataset:
        """The training images under the evaluation transform (no flip)."""
        return self.train.with_transform(self.test.transform)

    def ground_truth(self) -> dict[str, list[dict[str, Any]]]:
        """The evaluation split's ground truth, a fresh COCO-format dict
        (:meth:`GroundTruth.coco`)."""
        return self.truth.coco()

    def describe(self, name: str) -> dict[str, Any]:
        """Classes, split sizes, boxes, what was left out and the metric (stored in the run
        folder), then the :attr:`notes`; with standard sizes also those and
        ``standard_size``."""
        facts: dict[str, Any] = {
            "name": name,
            "num_classes": self.num_classes,
            "train_samples": len(self.train),
            "test_samples": len(self.test),
            "train_boxes": len(self.train.table.labels),
            "test_boxes": len(self.test.table.labels),
            "train_images_without_boxes": self.images_left_out,
            "train_boxes_left_out": self.boxes_left_out["train"],
            "test_boxes_left_out": self.boxes_left_out["test"],
            "classes": list(self.classes),
            "metric": self.metric,
            **self.notes,
        }
        if self.standard is not None:
            facts["standard_train_samples"], facts["standard_test_samples"] = self.standard
            facts["standard_size"] = (len(self.train), len(self.test)) == self.standard
        return facts
