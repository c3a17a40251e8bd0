"""Reading COCO instance annotation files (``annotations/instances_<split>.json``) with
``json`` and NumPy: the shared checks of the COCO 2014 multi-label reader
(:mod:`ndkd.data.coco`) and the COCO 2017 detection reader
(:mod:`ndkd.data.coco_detection`). Every refusal is one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

_KEYS = ("images", "annotations", "categories")


def instance_files(root: Path, name: str, dataset: str) -> tuple[Path, Path]:
    """``(annotations/instances_<name>.json, <name>/)`` under ``root`` for split folder
    ``name`` of ``dataset`` (e.g. ``"COCO 2017"``, for the messages).

    Raises:
        FileNotFoundError: ``root`` or the image folder is missing.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} root {str(root)!r} is not a folder")
    folder = root / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: expected the COCO {name} images")
    return root / "annotations" / f"instances_{name}.json", folder


def load_instances(path: Path, dataset: str) -> dict[str, Any]:
    """The JSON object of ``path``, checked to hold the lists ``images``, ``annotations``
    and ``categories``.

    Raises:
        FileNotFoundError: no such file (the message names ``dataset``).
        ValueError: malformed JSON or another structure.
    """
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: expected the {dataset} instance annotations"
        ) from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: malformed JSON ({error})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in _KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected an object with lists {', '.join(_KEYS)}, found {found}")
    return data


def fields(path: Path, data: dict[str, Any], kind: str, *keys: str) -> list[tuple[Any, ...]]:
    """``keys`` of every entry of list ``kind``."""
    try:
        return [tuple(entry[key] for key in keys) for entry in data[kind]]
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: malformed {kind} entry: expected fields {', '.join(keys)} ({error!r})"
        ) from None


def int_array(path: Path, values: list[Any], kind: str, what: str = "ids") -> np.ndarray:
    """``values`` (``what`` of the entries of list ``kind``) as ``int64``."""
    try:
        return np.array(values, dtype=np.int64)
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{path}: malformed {kind}: {what} must be integers") from None


def unique_ids(path: Path, ids: np.ndarray, of: str) -> np.ndarray:
    """The order that sorts ``ids`` (``of``: what they number, for the message).

    Raises:
        ValueError: an id listed twice.
    """
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(np.diff(ids[order]) == 0)
    if len(repeated):
        raise ValueError(f"{path}: id {int(ids[order[repeated[0]]])} listed twice in the {of}")
    return order


def lookup(path: Path, known: np.ndarray, wanted: np.ndarray, field: str, of: str) -> np.ndarray:
    """The index in ``known`` of every ``wanted`` id of the annotations (``field``: the
    annotation field, ``of``: what ``known`` lists, for the messages).

    Raises:
        ValueError: an id listed twice in ``known``, or a ``wanted`` id not in it.
    """
    order = unique_ids(path, known, of)
    at = np.searchsorted(known, wanted, sorter=order)
    found = at < len(known)
    found[found] = known[order[at[found]]] == wanted[found]
    if not found.all():
        bad = int(np.flatnonzero(~found)[0])
        raise ValueError(
            f"{path}: annotations[{bad}] has {field} {int(wanted[bad])}, not one of the {of}"
        )
    return order[at]


def sorted_categories(path: Path, data: dict[str, Any]) -> list[tuple[int, str]]:
    """The ``(id, name)`` categories in id order."""
    categories = fields(path, data, "categories", "id", "name")
    ids = int_array(path, [c for c, _ in categories], "categories")
    return [(int(ids[i]), str(categories[i][1])) for i in np.argsort(ids, kind="stable")]


def same_categories(
    root: Path, names: tuple[str, str], categories: tuple[list[Any], list[Any]]
) -> None:
    """Raise ``ValueError`` unless the two annotation files (split folders ``names``) list
    the same categories."""
    if categories[0] != categories[1]:
        first, second = (f"instances_{name}.json" for name in names)
        raise ValueError(f"{root / 'annotations'}: {first} and {second} list different categories")
