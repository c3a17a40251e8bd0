"""Import the class-mean files published with the ND paper's code (``center_emb_train.json``)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ndkd.centers.store import ClassMeans

LAYOUT = '{"0": [D floats], ..., "C-1": [D floats]}'
_INDEX = re.compile(r"(0|[1-9][0-9]*)")


def load_official_json(path: str | os.PathLike[str]) -> ClassMeans:
    """Read a public ``center_emb_train.json``: a JSON object with keys ``"0"``..``"C-1"``
    (in any order), each a list of D finite numbers. Returns :class:`ClassMeans` with
    unknown counts.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not such an object; the message names the path and, for a
            bad entry, its key (a duplicate, missing or non-index key, a row that is not a
            list, a value that is not a finite number, ``true``/``false``, rows of
            different lengths).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a class-means JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"class-means JSON not found: {path}")
    try:
        raw = json.loads(
            path.read_text(encoding="utf-8"), object_pairs_hook=lambda pairs: _unique(pairs, path)
        )
    except ValueError as error:  # also UnicodeDecodeError, json.JSONDecodeError
        if str(error).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not valid JSON ({error}); expected an object {LAYOUT}") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f"{path}: expected a non-empty JSON object {LAYOUT}, found "
            f"{'an empty object' if isinstance(raw, dict) else type(raw).__name__}"
        )
    rows = _rows_by_class(raw, path)
    means = torch.tensor(rows, dtype=torch.float64)
    metadata = {"source": "official-json", "path": str(path)}
    return ClassMeans(means.float(), None, metadata).validate(str(path))


def _unique(pairs: list[tuple[str, Any]], path: Path) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a key given twice (json keeps the last)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"{path}: key {key!r} appears more than once")
        result[key] = value
    return result


def _rows_by_class(raw: dict[str, Any], path: Path) -> list[list[float]]:
    """The rows in class order, each checked: a non-empty list of finite numbers, all of
    one length."""
    for key in raw:
        if not _INDEX.fullmatch(key):
            raise ValueError(
                f"{path}: key {key!r} is not a class index; keys must be '0'..'C-1' ({LAYOUT})"
            )
    keyed = {int(key): value for key, value in raw.items()}
    expected = set(range(len(keyed)))
    if set(keyed) != expected:
        missing = sorted(expected - set(keyed))[:10]
        extra = sorted(set(keyed) - expected)[:10]
        raise ValueError(
            f"{path}: keys must be exactly '0'..'{len(keyed) - 1}'; "
            f"missing {missing}, unexpected {extra}"
        )
    rows = [_row(str(k), keyed[k], path) for k in range(len(keyed))]
    dim = len(rows[0])
    for k, row in enumerate(rows):
        if len(row) != dim:
            raise ValueError(
                f"{path}: key '{k}' lists {len(row)} numbers but key '0' lists {dim}; "
                "every class must list the same positive number of floats"
            )
    return rows


def _row(key: str, row: Any, path: Path) -> list[float]:
    if not isinstance(row, list) or not row:
        found = "an empty list" if row == [] else type(row).__name__
        raise ValueError(f"{path}: key {key!r} must map to a list of numbers, found {found}")
    values = []
    for index, value in enumerate(row):
        where = f"{path}: key {key!r}, value {index}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} is {json.dumps(value)[:40]}; expected a number")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"{where} is {json.dumps(value)[:40]}; expected a finite number")
        values.append(number)
    return values
