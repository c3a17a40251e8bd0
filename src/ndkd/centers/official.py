"""Import the class-mean files published with the ND paper's code (``center_emb_train.json``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ndkd.centers.store import ClassMeans


def load_official_json(path: str | os.PathLike[str]) -> ClassMeans:
    """Read a public ``center_emb_train.json``: a JSON object with keys ``"0"``..``"C-1"``
    (in any order), each a list of D floats. Returns :class:`ClassMeans` with unknown
    counts. Raises ``FileNotFoundError`` or ``ValueError`` naming the path and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-means JSON not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path}: not valid JSON ({error}); expected an object "
            '{"0": [D floats], ..., "C-1": [D floats]}'
        ) from error
    if not isinstance(raw, dict) or not raw:
        raise ValueError(
            f'{path}: expected a non-empty JSON object {{"0": [...], ...}}, '
            f"found {type(raw).__name__}"
        )
    rows = _rows_by_class(raw, path)
    dims = {len(row) for row in rows}
    if len(dims) != 1 or 0 in dims:
        raise ValueError(
            f"{path}: every class must list the same positive number of floats, "
            f"found lengths {sorted(dims)}"
        )
    try:
        means = torch.tensor(rows, dtype=torch.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: class means must be lists of numbers ({error})") from error
    if not all(math.isfinite(v) for v in means.flatten().tolist()):
        raise ValueError(f"{path}: contains non-finite values")
    metadata = {"source": "official-json", "path": str(path)}
    return ClassMeans(means.float(), None, metadata).validate(str(path))


def _rows_by_class(raw: dict, path: Path) -> list[list[float]]:
    try:
        keyed = {int(key): value for key, value in raw.items()}
    except ValueError as error:
        raise ValueError(f"{path}: keys must be class indices '0'..'C-1' ({error})") from error
    expected = set(range(len(keyed)))
    if set(keyed) != expected:
        missing = sorted(expected - set(keyed))[:10]
        extra = sorted(set(keyed) - expected)[:10]
        raise ValueError(
            f"{path}: keys must be exactly '0'..'{len(keyed) - 1}'; "
            f"missing {missing}, unexpected {extra}"
        )
    rows = [keyed[k] for k in range(len(keyed))]
    if not all(isinstance(row, list) for row in rows):
        raise ValueError(f"{path}: each class must map to a list of floats")
    return rows
