"""Accuracy counting on device and the run folder's ``metrics.jsonl``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ndkd.atomic import atomic_write

log = logging.getLogger(__name__)


class MetricsLog:
    """``metrics.jsonl``: one JSON object per completed epoch.

    The checkpoint holds the same history, so after a crash :meth:`rewrite` restores the
    file to exactly the epochs the checkpoint covers (no lost or duplicated lines).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(record) + "\n" for record in history)
        atomic_write(self.path, lambda tmp: tmp.write_text(text))


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file; see :func:`read_metrics_lines`."""
    return [record for _, record in read_metrics_lines(path)]


def read_metrics_lines(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each JSON object of a ``metrics.jsonl`` file (blank
    lines skipped; numbers are 1-based, for messages about a record).

    A last line cut short (no final newline, the start of a record: what a crash in the
    middle of :meth:`MetricsLog.append` leaves) is ignored with a warning.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder, or a line is not UTF-8 text holding a JSON object;
            names the file and the line number.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a metrics.jsonl file")
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    lines = path.read_bytes().split(b"\n")
    records: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(lines, start=1):
        last = number == len(lines)  # the bytes after the final newline, if any
        line = _decode(raw, last, f"{path}, line {number}")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if last and line.lstrip().startswith("{"):
                log.warning(
                    "%s, line %d: ignoring an incomplete last record (%d bytes, no final "
                    "newline), as an interrupted write leaves it",
                    path,
                    number,
                    len(raw),
                )
                continue
            raise ValueError(
                f"{path}, line {number}: not valid JSON ({error.msg}); expected one JSON "
                "object per epoch (one per line)"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{path}, line {number}: expected a JSON object, found {type(record).__name__}"
            )
        records.append((number, record))
    return records


def _decode(raw: bytes, last: bool, where: str) -> str:
    """UTF-8 text of one line; a last line may end inside a character (cut short)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        if last and error.reason == "unexpected end of data":
            return raw[: error.start].decode("utf-8", errors="replace")
        raise ValueError(
            f"{where}: not UTF-8 text; expected one JSON object per epoch (binary or corrupt file)"
        ) from None
