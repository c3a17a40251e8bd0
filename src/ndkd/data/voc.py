"""PASCAL VOC 2007 as a multi-label set: ``trainval`` for training, ``test`` for evaluation.

An image's target over the 20 classes (:data:`VOC_CLASSES`, the standard order): 1 if it
has a non-difficult object of the class, -1 if all its objects of the class are marked
difficult (trained as positive by the LSHFM authors; ignored by the VOC evaluation), else
0. Images without any object are dropped (counted, logged, in ``describe``). Annotations
are read with ``xml.etree.ElementTree``; the images (``JPEGImages/<id>.jpg``) are only
opened when loaded.
"""

from __future__ import annotations

import logging
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from ndkd.data.multilabel import DIFFICULT, PRESENT, LabelledFiles, MultiLabelSplits, disk_splits
from ndkd.data.streaming import NameBuffer

logger = logging.getLogger(__name__)

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
VOC2007_TRAINVAL_SAMPLES, VOC2007_TEST_SAMPLES = 5011, 4952
_PARTS = ("JPEGImages", "Annotations", "ImageSets/Main")
_INDEX = {name: index for index, name in enumerate(VOC_CLASSES)}
T = TypeVar("T")


def voc_folder(root: Path, year: str, *, bare: bool = False) -> Path:
    """The ``VOC<year>`` folder (with ``JPEGImages/``, ``Annotations/`` and
    ``ImageSets/Main/``): ``root/VOCdevkit/VOC<year>``, ``root/VOC<year>`` or, if ``bare``,
    ``root`` itself."""
    candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", *([root] if bare else [])]
    expected = ", ".join(f"{part}/" for part in _PARTS)
    for folder in candidates:
        found = [(folder / part).is_dir() for part in _PARTS]
        if all(found):
            return folder
        if any(found):
            missing = ", ".join(f"{p}/" for p, f in zip(_PARTS, found) if not f)
            raise FileNotFoundError(f"{folder} holds no {missing}: expected {expected}")
    raise FileNotFoundError(
        f"no VOC{year} folder in {root}: expected {expected} in one of "
        + ", ".join(str(folder) for folder in candidates)
    )


def read_image_set(folder: Path, image_set: str) -> tuple[Path, list[str]]:
    """The image list ``ImageSets/Main/<image_set>.txt`` of VOC folder ``folder`` and the
    image ids it lists.

    Raises:
        FileNotFoundError: the list is missing (named).
    """
    listing = folder / "ImageSets" / "Main" / f"{image_set}.txt"
    try:
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{listing} is missing: expected the VOC {image_set} image list"
        ) from None
    return listing, ids


def read_annotations(
    folder: Path, listing: Path, ids: list[str], read: Callable[[Path, ET.Element], T]
) -> list[T]:
    """``read(xml, root element)`` of the annotation file ``Annotations/<id>.xml`` of VOC
    folder ``folder`` of each image id of image list ``listing``.

    Raises:
        FileNotFoundError: an annotation file is missing (named).
        ValueError: malformed XML (file named).
    """
    annotations = []
    for image in ids:
        xml = folder / "Annotations" / f"{image}.xml"
        try:
            tree = ET.parse(xml)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{xml} is missing: {listing} lists image {image!r}, expected its annotation"
            ) from None
        except ET.ParseError as error:
            raise ValueError(f"{xml}: malformed XML ({error})") from None
        annotations.append(read(xml, tree.getroot()))
    return annotations


def object_class(xml: Path, item: ET.Element) -> tuple[int, bool]:
    """``(class index in VOC_CLASSES, difficult)`` of ``<object>`` ``item`` of annotation
    file ``xml`` (no ``<difficult>`` tag: not difficult).

    Raises:
        ValueError: an unknown class name or a difficult flag other than 0 or 1.
    """
    name = (item.findtext("name") or "").strip()
    if name not in _INDEX:
        raise ValueError(
            f"{xml}: unknown class {name!r}; expected one of the 20 VOC classes: "
            + ", ".join(VOC_CLASSES)
        )
    difficult = (item.findtext("difficult") or "0").strip()
    if difficult not in ("0", "1"):
        raise ValueError(f"{xml}: object {name!r} has difficult={difficult!r}; expected 0 or 1")
    return _INDEX[name], difficult == "1"


def _objects(xml: Path, annotation: ET.Element) -> list[tuple[int, bool]]:
    """``(class index, difficult)`` of every object of annotation file ``xml``."""
    return [object_class(xml, item) for item in annotation.findall("object")]


def _read_split(folder: Path, image_set: str) -> tuple[LabelledFiles, int]:
    """The labelled images of ``ImageSets/Main/<image_set>.txt`` and how many were dropped
    for having no object."""
    listing, ids = read_image_set(folder, image_set)
    annotations = read_annotations(folder, listing, ids, _objects)
    found = [  # (row, class index, difficult) of every object
        (row, index, hard) for row, objects in enumerate(annotations) for index, hard in objects
    ]
    rows, classes, hard = np.array(found, dtype=np.int64).reshape(-1, 3).T
    hard = hard.astype(bool)
    present = np.zeros((len(ids), len(VOC_CLASSES)), dtype=bool)
    present[rows[~hard], classes[~hard]] = True
    only_difficult = np.zeros_like(present)
    only_difficult[rows[hard], classes[hard]] = True
    only_difficult &= ~present
    targets = (PRESENT * present + DIFFICULT * only_difficult).astype(np.int8)
    keep = np.bincount(rows, minlength=len(ids)) > 0
    dropped = len(ids) - int(keep.sum())
    if dropped:
        logger.info("%s: dropped %d images without objects", listing, dropped)
    names = NameBuffer.of([ids[row] for row in np.flatnonzero(keep)])
    files = LabelledFiles(str(folder / "JPEGImages"), names, targets[keep], suffix=".jpg")
    return files, dropped


def read_voc2007(root: str | os.PathLike[str], image_size: int = 448) -> MultiLabelSplits:
    """Read VOC2007 from ``root``: the folder holding ``VOCdevkit/``, ``VOCdevkit/`` itself
    or the ``VOC2007/`` folder (with ``JPEGImages/``, ``Annotations/`` and
    ``ImageSets/Main/{trainval,test}.txt``); images resized to ``image_size`` squared.
    Evaluated with the interpolated VOC AP.

    Raises:
        FileNotFoundError: no VOC2007 folder, a missing sub-folder, image list or
            annotation file (named).
        ValueError: malformed XML, an unknown class name or difficult flag (file named), a
            size below 1.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"VOC2007 root {str(root)!r} is not a folder")
    start = time.perf_counter()
    folder = voc_folder(root, "2007", bare=True)
    (train, train_dropped), (test, test_dropped) = (
        _read_split(folder, image_set) for image_set in ("trainval", "test")
    )
    logger.info(
        "%s: %d trainval and %d test images listed in %.2f s",
        folder,
        len(train),
        len(test),
        time.perf_counter() - start,
    )
    return disk_splits(
        list(VOC_CLASSES),
        train,
        test,
        image_size,
        ap_definition="interpolated",
        without_labels={"train": train_dropped, "test": test_dropped},
        standard=(VOC2007_TRAINVAL_SAMPLES, VOC2007_TEST_SAMPLES),
    )
