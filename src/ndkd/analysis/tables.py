"""Tables as Markdown text and CSV files."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right-aligned."""
    cells = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]
    return "\n".join(
        [line(headers), "|" + "|".join(f" {r} " for r in rule) + "|"] + [line(row) for row in cells]
    )


def write_csv(
    path: str | os.PathLike[str], headers: Sequence[str], rows: Sequence[Sequence[Any]]
) -> Path:
    """Write ``rows`` under ``headers``; ``None`` becomes an empty cell."""
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(headers)
        writer.writerows([["" if cell is None else cell for cell in row] for row in rows])
    return path
