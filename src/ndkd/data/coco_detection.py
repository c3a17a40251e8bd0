"""COCO 2017 object detection: ``train2017`` for training, ``val2017`` for evaluation.

Labels ``1..80`` are the categories in id order (:attr:`DetectionSplits.category_ids` maps
them back). As in torchvision's detection references, the targets leave out crowd
annotations and boxes without area (``bbox`` ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``
clipped to the image, then width or height 0), and training drops the images left without a
box; evaluation keeps every image, and its ground truth (:meth:`DetectionSplits.ground_truth`)
is the annotation file's as it is, crowds included (COCO's evaluation ignores them). The
JSON files are read with ``json``; the images are only opened when loaded.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ndkd.data.coco_json import (
    fields,
    instance_files,
    int_array,
    load_instances,
    lookup,
    same_categories,
    sorted_categories,
    unique_ids,
)
from ndkd.data.detection import (
    BACKGROUND,
    BoxTable,
    DetectionDataset,
    DetectionSplits,
    DetectionTransform,
    GroundTruth,
)
from ndkd.data.streaming import NameBuffer

logger = logging.getLogger(__name__)

COCO2017_TRAIN_SAMPLES, COCO2017_VAL_SAMPLES = 117_266, 5_000
"""Training images with a box (after the rule above); all validation images."""
_SPLITS = ("train2017", "val2017")
_DATASET = "COCO 2017"
_ANNOTATION = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


@dataclass(frozen=True)
class _Split:
    """One annotation file: its categories, every image's file name and targets, its
    ground truth and how many annotations the targets leave out."""

    categories: list[tuple[int, str]]
    files: list[str]
    table: BoxTable
    truth: GroundTruth
    boxes_left_out: int


def _first(path: Path, bad: np.ndarray, kind: str, problem: str) -> None:
    """Raise ``ValueError`` naming the first entry of list ``kind`` where ``bad`` holds."""
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: {kind}[{index}] {problem}")


def _numbers(path: Path, annotations: list[tuple[Any, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """The ``bbox`` ``[M, 4]`` and ``area`` ``[M]`` of the annotations, ``float64``."""
    try:
        bboxes = np.array([entry[3] for entry in annotations], dtype=np.float64)
        areas = np.array([entry[4] for entry in annotations], dtype=np.float64)
    except (TypeError, ValueError):
        bboxes = areas = np.zeros(0)
    if bboxes.size == 0:
        bboxes = bboxes.reshape(0, 4)
    if bboxes.shape != (len(annotations), 4) or areas.shape != (len(annotations),):
        raise ValueError(
            f"{path}: malformed annotations: every bbox must be 4 numbers, every area a number"
        )
    finite = np.isfinite(bboxes).all(1) & np.isfinite(areas)
    _first(path, ~finite, "annotations", "has a bbox or area that is not finite")
    _first(path, (bboxes[:, 2:] < 0).any(1), "annotations", "has a bbox of negative size")
    return bboxes, areas


def _read_split(path: Path) -> _Split:
    data = load_instances(path, _DATASET)
    categories = sorted_categories(path, data)
    category_ids = np.array([id_ for id_, _ in categories], dtype=np.int64)
    images = fields(path, data, "images", "id", "file_name", "width", "height")
    image_ids = int_array(path, [entry[0] for entry in images], "images")
    sizes = int_array(path, [entry[2:] for entry in images], "images", "width and height")
    sizes = sizes.reshape(-1, 2)
    _first(path, (sizes < 1).any(1), "images", "has a width or height below 1")
    annotations = fields(path, data, "annotations", *_ANNOTATION)
    keys = int_array(path, [entry[:3] for entry in annotations], "annotations").reshape(-1, 3)
    unique_ids(path, keys[:, 0], f"{len(annotations)} annotations")
    crowd = int_array(path, [entry[5] for entry in annotations], "annotations", "iscrowd")
    _first(path, (crowd != 0) & (crowd != 1), "annotations", "has iscrowd other than 0 or 1")
    bboxes, areas = _numbers(path, annotations)
    rows = lookup(path, image_ids, keys[:, 1], "image_id", f"{len(images)} images")
    of = f"{len(categories)} categories"
    labels = 1 + lookup(path, category_ids, keys[:, 2], "category_id", of)
    limits = np.tile(sizes[rows], 2)  # (width, height, width, height)
    corners = np.concatenate([bboxes[:, :2], bboxes[:, :2] + bboxes[:, 2:]], axis=1)
    corners = np.clip(corners, 0, limits)
    keep = (crowd == 0) & (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
    table = BoxTable.grouped(rows[keep], corners[keep], labels[keep], image_ids)
    truth = GroundTruth(
        image_ids, sizes, keys[:, 0], keys[:, 1], keys[:, 2], bboxes, areas, crowd, categories
    )
    left_out = len(annotations) - int(keep.sum())
    if left_out:
        logger.info("%s: left %d crowd or empty boxes out of the targets", path, left_out)
    return _Split(categories, [str(entry[1]) for entry in images], table, truth, left_out)


def read_coco(root: str | os.PathLike[str]) -> DetectionSplits:
    """Read COCO 2017 detection from ``root`` (``annotations/instances_{train,val}2017.json``,
    ``train2017/``, ``val2017/``).

    Raises:
        FileNotFoundError: ``root``, an annotation file or an image folder is missing.
        ValueError: malformed JSON, an entry without its fields, an id listed twice, an
            annotation with an unknown ``image_id`` or ``category_id``, a bbox that is not
            4 finite numbers or has a negative size, an image size below 1, different
            categories in the two files (file named).
    """
    root = Path(root)
    start = time.perf_counter()
    (train_json, train_folder), (test_json, test_folder) = (
        instance_files(root, name, _DATASET) for name in _SPLITS
    )
    train, test = _read_split(train_json), _read_split(test_json)
    same_categories(root, _SPLITS, (train.categories, test.categories))
    keep = train.table.counts() > 0
    dropped = len(keep) - int(keep.sum())
    if dropped:
        logger.info("%s: dropped %d training images without boxes", train_json, dropped)
    logger.info(
        "%s: %d training and %d validation images listed in %.2f s",
        root,
        int(keep.sum()),
        len(test.files),
        time.perf_counter() - start,
    )
    kept = NameBuffer.of([train.files[row] for row in np.flatnonzero(keep)])
    return DetectionSplits(
        [BACKGROUND, *(name for _, name in train.categories)],
        DetectionDataset(
            str(train_folder),
            kept,
            train.table.subset(keep),
            DetectionTransform(train=True),
            image_sizes=train.truth.image_sizes[keep],  # aspect-ratio grouping
        ),
        DetectionDataset(
            str(test_folder), NameBuffer.of(test.files), test.table, DetectionTransform()
        ),
        test.truth,
        [0, *(id_ for id_, _ in train.categories)],
        images_left_out=dropped,
        boxes_left_out={"train": train.boxes_left_out, "test": test.boxes_left_out},
        standard=(COCO2017_TRAIN_SAMPLES, COCO2017_VAL_SAMPLES),
    )
