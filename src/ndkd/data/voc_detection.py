"""PASCAL VOC detection as the LSHFM detection tables use it (``voc0712``): VOC2007
``trainval`` + VOC2012 ``trainval`` for training, VOC2007 ``test`` for evaluation, labels
``1..20`` the classes of :data:`~ndkd.data.voc.VOC_CLASSES` in order (category id = label).

Boxes follow LSHFM's ``ConvertToCocoAnno`` (``src/dataset/voc_utils.py``): a ``<bndbox>``
holds 1-based, inclusive pixel indices, so ``(xmin, ymin, xmax, ymax)`` becomes the
continuous box ``(xmin - 1, ymin - 1, xmax, ymax)`` (``xmin = 1, xmax = W`` covers the whole
width, ``0..W``; 0-based columns ``xmin - 1..xmax - 1`` as :mod:`ndkd.data.detection` asks),
clipped to the image (``<size>``); a box left without area is dropped from targets and
ground truth. Coordinates are read as numbers, decimals kept (LSHFM's ``int()`` takes
integers only). Objects flagged ``difficult`` are left out of the targets of both
splits (LSHFM converts both with ``ignore_difficult=True``) and kept in the evaluation ground
truth (:meth:`DetectionSplits.ground_truth`) with ``"difficult": 1``, which the VOC 2007 mAP
ignores (``iscrowd`` stays 0: pycocotools counts them as ordinary boxes). As for COCO,
training drops the images left without a box (counted); evaluation keeps every image.

Image ids are unique across both years and below 2^24, made from the file name (the year of
a VOC2012 name in it): ``NNNNNN`` (VOC2007) -> ``NNNNNN``, ``YYYY_NNNNNN`` -> ``(YYYY - 2000)
* 10^6 + NNNNNN`` (:func:`voc_image_id`). Annotations are read with
``xml.etree.ElementTree``; the images are only opened when loaded.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ndkd.data.detection import (
    BACKGROUND,
    BoxTable,
    DetectionDataset,
    DetectionSplits,
    DetectionTransform,
    GroundTruth,
)
from ndkd.data.streaming import NameBuffer
from ndkd.data.voc import (
    VOC2007_TEST_SAMPLES,
    VOC2007_TRAINVAL_SAMPLES,
    VOC_CLASSES,
    object_class,
    read_annotations,
    read_image_set,
    voc_folder,
)

logger = logging.getLogger(__name__)

VOC2012_TRAINVAL_SAMPLES = 11_540
VOC0712_TRAIN_SAMPLES = VOC2007_TRAINVAL_SAMPLES + VOC2012_TRAINVAL_SAMPLES
"""The 16551 images of both ``trainval`` lists (LSHFM's training set)."""
IMAGE_ID_RULE = "NNNNNN.jpg -> NNNNNN; YYYY_NNNNNN.jpg -> (YYYY - 2000) * 1000000 + NNNNNN"
_NAME = re.compile(r"(?:(20(?:0[1-9]|1[0-5]))_)?(\d{6})")
_CORNERS = ("xmin", "ymin", "xmax", "ymax")
_ONE_BASED = np.array([1.0, 1.0, 0.0, 0.0])
"""Subtracted from ``(xmin, ymin, xmax, ymax)``: first pixel index -> its left/top edge."""
_CATEGORIES = list(enumerate(VOC_CLASSES, start=1))
_TRAIN_SETS = (("2007", "trainval"), ("2012", "trainval"))
_TEST_SETS = (("2007", "test"),)

_Objects = list[tuple[int, bool, list[float]]]


def voc_image_id(name: str) -> int | None:
    """The image id of VOC file name ``name`` (without ``.jpg``; rule in the module
    documentation, ``YYYY`` from 2001 to 2015), ``None`` for another name."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    year, number = match.groups()
    return (int(year) - 2000 if year else 0) * 1_000_000 + int(number)


def _size(xml: Path, annotation: ET.Element) -> tuple[int, int]:
    """The image's ``(width, height)`` from ``<size>``."""
    try:
        width, height = (int(annotation.findtext(f"size/{key}")) for key in ("width", "height"))
    except (TypeError, ValueError):
        width = height = 0
    if min(width, height) < 1:
        raise ValueError(
            f"{xml}: malformed <size>: expected integers <width> and <height> of at least 1"
        )
    return width, height


def _bndbox(xml: Path, index: int, name: str, item: ET.Element) -> list[float]:
    """``(xmin, ymin, xmax, ymax)`` of ``<object>`` ``index`` (class ``name``), as written."""
    try:
        box = [float(item.findtext(f"bndbox/{key}")) for key in _CORNERS]
    except (TypeError, ValueError):
        box = [math.nan]
    if not all(math.isfinite(value) for value in box):
        raise ValueError(
            f"{xml}: object {index} ({name}) has a malformed <bndbox>: expected numbers "
            + ", ".join(f"<{key}>" for key in _CORNERS)
        )
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"{xml}: object {index} ({name}) has xmax < xmin or ymax < ymin")
    return box


def _annotation(xml: Path, annotation: ET.Element) -> tuple[tuple[int, int], _Objects]:
    """The image size and ``(class index, difficult, bndbox)`` of every object of
    annotation file ``xml``."""
    objects = []
    for index, item in enumerate(annotation.findall("object")):
        label, difficult = object_class(xml, item)
        objects.append((label, difficult, _bndbox(xml, index, VOC_CLASSES[label], item)))
    return _size(xml, annotation), objects


@dataclass(frozen=True)
class _Split:
    """The images of some image sets: file names (relative to the root), the image set each
    comes from, the targets, the ground truth and the objects left out of the targets."""

    files: list[str]
    origins: np.ndarray
    table: BoxTable
    truth: GroundTruth
    difficult: int
    empty: int


def _read_split(root: Path, folders: dict[str, Path], sets: tuple[tuple[str, str], ...]) -> _Split:
    """The images of image sets ``sets`` (``(year, image set)``), in order."""
    files: list[str] = []
    ids: list[int] = []
    origins: list[int] = []
    sizes: list[tuple[int, int]] = []
    found: list[tuple[float, ...]] = []  # (row, class index, difficult, xmin, ymin, xmax, ymax)
    listed: dict[str, Path] = {}
    for origin, (year, image_set) in enumerate(sets):
        folder = folders[year]
        listing, names = read_image_set(folder, image_set)
        images = folder.relative_to(root) / "JPEGImages"
        for name in names:
            image_id = voc_image_id(name)
            if image_id is None:
                raise ValueError(
                    f"{listing}: image {name!r} is not named as VOC images are (NNNNNN or "
                    "YYYY_NNNNNN, YYYY from 2001 to 2015), which the image ids are made from"
                )
            if name in listed:
                where = "twice" if listed[name] == listing else f"also in {listed[name]}"
                raise ValueError(f"{listing}: image {name!r} is listed {where}")
            listed[name] = listing
            ids.append(image_id)
            files.append(str(images / f"{name}.jpg"))
            origins.append(origin)
        for size, objects in read_annotations(folder, listing, names, _annotation):
            found += [(len(sizes), label, hard, *box) for label, hard, box in objects]
            sizes.append(size)
    table = np.array(found, dtype=np.float64).reshape(-1, 7)
    rows = table[:, 0].astype(np.int64)  # ascending: BoxTable.grouped keeps the order
    labels, hard = table[:, 1].astype(np.int64) + 1, table[:, 2] > 0
    image_ids = np.array(ids, dtype=np.int64)
    dimensions = np.array(sizes, dtype=np.int64).reshape(-1, 2)  # (width, height)
    corners = np.clip(table[:, 3:] - _ONE_BASED, 0, np.tile(dimensions[rows], 2))
    area = (corners[:, 2] > corners[:, 0]) & (corners[:, 3] > corners[:, 1])
    keep = area & ~hard
    truth = BoxTable.grouped(rows[area], corners[area], labels[area], image_ids)
    return _Split(
        files,
        np.array(origins, dtype=np.int64),
        BoxTable.grouped(rows[keep], corners[keep], labels[keep], image_ids),
        GroundTruth.of_table(truth, dimensions, _CATEGORIES, hard[area]),
        int((hard & area).sum()),
        int((~area).sum()),
    )


def read_voc0712(root: str | os.PathLike[str]) -> DetectionSplits:
    """Read VOC 2007 + 2012 detection from ``root``: the folder holding ``VOCdevkit/`` or
    ``VOCdevkit/`` itself, with ``VOC2007/`` and ``VOC2012/`` (each with ``JPEGImages/``,
    ``Annotations/`` and ``ImageSets/Main/``; ``trainval.txt`` in both, ``test.txt`` in
    ``VOC2007``). Evaluated with the VOC 2007 11-point mAP (``metric = "voc07"``).

    Raises:
        FileNotFoundError: ``root``, a year's folder, a sub-folder, an image list or an
            annotation file is missing (named).
        ValueError: malformed XML, an unknown class name or difficult flag, a malformed
            ``<size>`` or ``<bndbox>`` (file named); an image not named as in VOC or listed
            twice (image list named).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC root {str(root)!r} is not a folder")
    start = time.perf_counter()
    folders = {year: voc_folder(root, year) for year in ("2007", "2012")}
    train, test = (_read_split(root, folders, sets) for sets in (_TRAIN_SETS, _TEST_SETS))
    for split, read in (("train", train), ("test", test)):
        if read.difficult or read.empty:
            logger.info(
                "%s: left %d difficult and %d empty boxes out of the %s targets",
                root,
                read.difficult,
                read.empty,
                split,
            )
    keep = train.table.counts() > 0
    dropped = len(keep) - int(keep.sum())
    if dropped:
        logger.info("%s: dropped %d training images without boxes", root, dropped)
    per_set = np.bincount(train.origins[keep], minlength=len(_TRAIN_SETS)).tolist()
    logger.info(
        "%s: %d training (%s) and %d test images listed in %.2f s; image ids: %s",
        root,
        int(keep.sum()),
        " + ".join(map(str, per_set)),
        len(test.files),
        time.perf_counter() - start,
        IMAGE_ID_RULE,
    )
    kept = NameBuffer.of([train.files[row] for row in np.flatnonzero(keep)])
    return DetectionSplits(
        [BACKGROUND, *VOC_CLASSES],
        DetectionDataset(
            str(root),
            kept,
            train.table.subset(keep),
            DetectionTransform(train=True),
            image_sizes=train.truth.image_sizes[keep],  # aspect-ratio grouping
        ),
        DetectionDataset(str(root), NameBuffer.of(test.files), test.table, DetectionTransform()),
        test.truth,
        list(range(len(VOC_CLASSES) + 1)),
        images_left_out=dropped,
        boxes_left_out={
            "train": train.difficult + train.empty,
            "test": test.difficult + test.empty,
        },
        standard=(VOC0712_TRAIN_SAMPLES, VOC2007_TEST_SAMPLES),
        metric="voc07",
        notes={
            "train_samples_per_image_set": {
                f"VOC{year}/{image_set}": count
                for (year, image_set), count in zip(_TRAIN_SETS, per_set)
            },
            "image_ids": IMAGE_ID_RULE,
        },
    )
