"""Published numbers beside measured ones: the ``paper`` column of ``ndkd analyze``.

``paper_results.yaml`` (in this package) lists, per source, the published value of a metric
for the recipes that have one, each recipe named by its path below ``configs/`` without
``.yaml`` (what ``config.recipe`` holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from ndkd.config import RunConfig

PAPER_FILE = "paper_results.yaml"


@dataclass(frozen=True)
class PaperResult:
    """A published value (in %) of ``metric`` for one recipe, and where it is published."""

    value: float
    metric: str
    source: str


def _entries(document: dict[str, Any]) -> dict[str, PaperResult]:
    found: dict[str, PaperResult] = {}
    for name, block in document["sources"].items():
        for recipe, value in block["results"].items():
            if recipe in found:
                raise ValueError(f"{PAPER_FILE}: recipe {recipe!r} is listed twice ({name})")
            found[recipe] = PaperResult(float(value), block["metric"], block["source"])
    return found


@cache
def paper_results() -> dict[str, PaperResult]:
    """Every published value of the package's data file, by recipe name."""
    text = resources.files(__package__).joinpath(PAPER_FILE).read_text()
    return _entries(yaml.safe_load(text))


def paper_result(config: RunConfig, metric: str) -> PaperResult | None:
    """The published ``metric`` of ``config``'s recipe, or ``None`` when it has none."""
    found = paper_results().get(config.recipe)
    return found if found is not None and found.metric == metric else None
