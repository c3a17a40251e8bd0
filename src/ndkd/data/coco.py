"""COCO 2014 as a multi-label set: ``train2014`` for training, ``val2014`` for evaluation.

The 80 classes are the categories in id order; an image's target is 1 for the category of
each of its instance annotations (crowd ones included), else 0. Images without annotations
are dropped (counted, logged, in ``describe``), as in the LSHFM authors' code. The JSON
files are read with ``json`` (no pycocotools); the images are only opened when loaded.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ndkd.data.multilabel import PRESENT, LabelledFiles, MultiLabelSplits, disk_splits
from ndkd.data.streaming import NameBuffer

logger = logging.getLogger(__name__)

COCO2014_TRAIN_SAMPLES, COCO2014_VAL_SAMPLES = 82_081, 40_137
"""Images with at least one annotation."""
_SPLITS = (("train", "train2014"), ("test", "val2014"))
_KEYS = ("images", "annotations", "categories")


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: expected the COCO 2014 instance annotations"
        ) from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: malformed JSON ({error})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in _KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected an object with lists {', '.join(_KEYS)}, found {found}")
    return data


def _fields(path: Path, data: dict[str, Any], kind: str, *keys: str) -> list[tuple[Any, ...]]:
    """``keys`` of every entry of list ``kind``."""
    try:
        return [tuple(entry[key] for key in keys) for entry in data[kind]]
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: malformed {kind} entry: expected fields {', '.join(keys)} ({error!r})"
        ) from None


def _ids(path: Path, values: list[Any], kind: str) -> np.ndarray:
    """``values`` as ``int64``."""
    try:
        return np.array(values, dtype=np.int64)
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{path}: malformed {kind}: ids must be integers") from None


def _lookup(path: Path, known: np.ndarray, wanted: np.ndarray, field: str, of: str) -> np.ndarray:
    """The index in ``known`` (unique ids) of every ``wanted`` id of the annotations."""
    order = np.argsort(known, kind="stable")
    at = np.searchsorted(known, wanted, sorter=order)
    found = at < len(known)
    found[found] = known[order[at[found]]] == wanted[found]
    if not found.all():
        bad = int(np.flatnonzero(~found)[0])
        raise ValueError(
            f"{path}: annotations[{bad}] has {field} {int(wanted[bad])}, not one of the {of}"
        )
    return order[at]


def _read_split(path: Path, folder: Path) -> tuple[list[tuple[int, str]], LabelledFiles, int]:
    """The ``(id, name)`` categories in id order, the labelled images and how many images
    were dropped for having no annotation."""
    data = _load(path)
    categories = _fields(path, data, "categories", "id", "name")
    category_ids = _ids(path, [c for c, _ in categories], "categories")
    order = np.argsort(category_ids, kind="stable")
    categories = [(int(category_ids[i]), str(categories[i][1])) for i in order]
    images = _fields(path, data, "images", "id", "file_name")
    image_ids = _ids(path, [i for i, _ in images], "images")
    pairs = _ids(path, _fields(path, data, "annotations", "image_id", "category_id"), "annotations")
    pairs = pairs.reshape(-1, 2)
    categories_of = f"{len(order)} categories"
    columns = _lookup(path, category_ids[order], pairs[:, 1], "category_id", categories_of)
    rows = _lookup(path, image_ids, pairs[:, 0], "image_id", f"{len(images)} images")
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
    if not root.is_dir():
        raise FileNotFoundError(f"COCO 2014 root {str(root)!r} is not a folder")
    start = time.perf_counter()
    splits = {}
    for split, name in _SPLITS:
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: expected the COCO {name} images")
        splits[split] = _read_split(root / "annotations" / f"instances_{name}.json", folder)
    categories, train, train_dropped = splits["train"]
    test_categories, test, test_dropped = splits["test"]
    if categories != test_categories:
        raise ValueError(
            f"{root / 'annotations'}: instances_train2014.json and instances_val2014.json "
            "list different categories"
        )
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
