"""COCO 2014 as a multi-label set: ``train2014`` for training, ``val2014`` for evaluation.

The 80 classes are the categories in id order; an image's target is 1 for the category of
each of its instance annotations (crowd ones included), else 0. Images without annotations
are dropped (counted, logged, in ``describe``), as in the LSHFM authors' code. The JSON
files are read with ``json`` (no pycocotools); the images are only opened when loaded.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from ndkd.data.coco_json import (
    fields,
    instance_files,
    int_array,
    load_instances,
    lookup,
    same_categories,
    sorted_categories,
)
from ndkd.data.multilabel import PRESENT, LabelledFiles, MultiLabelSplits, disk_splits
from ndkd.data.streaming import NameBuffer

logger = logging.getLogger(__name__)

COCO2014_TRAIN_SAMPLES, COCO2014_VAL_SAMPLES = 82_081, 40_137
"""Images with at least one annotation."""
_SPLITS = (("train", "train2014"), ("test", "val2014"))
_DATASET = "COCO 2014"


def _read_split(path: Path, folder: Path) -> tuple[list[tuple[int, str]], LabelledFiles, int]:
    """The ``(id, name)`` categories in id order, the labelled images and how many images
    were dropped for having no annotation."""
    data = load_instances(path, _DATASET)
    categories = sorted_categories(path, data)
    category_ids = np.array([c for c, _ in categories], dtype=np.int64)
    images = fields(path, data, "images", "id", "file_name")
    image_ids = int_array(path, [i for i, _ in images], "images")
    pairs = int_array(
        path, fields(path, data, "annotations", "image_id", "category_id"), "annotations"
    ).reshape(-1, 2)
    of = f"{len(categories)} categories"
    columns = lookup(path, category_ids, pairs[:, 1], "category_id", of)
    rows = lookup(path, image_ids, pairs[:, 0], "image_id", f"{len(images)} images")
    targets = np.zeros((len(images), len(categories)), dtype=np.int8)
    targets[rows, columns] = PRESENT
    keep = targets.any(1)
    dropped = len(images) - int(keep.sum())
    if dropped:
        logger.info("%s: dropped %d images without annotations", path, dropped)
    names = NameBuffer.of([str(images[row][1]) for row in np.flatnonzero(keep)])
    return categories, LabelledFiles(str(folder), names, targets[keep]), dropped


def read_coco2014(root: str | os.PathLike[str], image_size: int = 448) -> MultiLabelSplits:
    """Read COCO 2014 from ``root`` (``annotations/instances_{train,val}2014.json``,
    ``train2014/``, ``val2014/``); images resized to ``image_size`` squared. Evaluated
    with the plain (non-interpolated) AP.

    Raises:
        FileNotFoundError: ``root``, an annotation file or an image folder is missing.
        ValueError: malformed JSON, an entry without its fields, an annotation with an
            unknown ``category_id`` or ``image_id`` (file named), different categories in
            the two files, a size below 1.
    """
    root = Path(root)
    start = time.perf_counter()
    splits = {split: _read_split(*instance_files(root, name, _DATASET)) for split, name in _SPLITS}
    categories, train, train_dropped = splits["train"]
    test_categories, test, test_dropped = splits["test"]
    same_categories(root, ("train2014", "val2014"), (categories, test_categories))
    logger.info(
        "%s: %d training and %d validation images listed in %.2f s",
        root,
        len(train),
        len(test),
        time.perf_counter() - start,
    )
    return disk_splits(
        [name for _, name in categories],
        train,
        test,
        image_size,
        ap_definition="plain",
        without_labels={"train": train_dropped, "test": test_dropped},
        standard=(COCO2014_TRAIN_SAMPLES, COCO2014_VAL_SAMPLES),
    )
