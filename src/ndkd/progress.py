"""The one progress event the library reports (training, class means, analyze, demo); no
imports from the rest of ndkd, so every layer may use it.

Counting convention (the "epoch base"): ``epoch`` is the 1-based number of the epoch being
run or just finished, as in ``metrics.jsonl`` (``{"epoch": 1}`` is the first epoch); ``done``
counts completed units (steps, batches, runs) of the current pass, from 1 up to ``total``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """A progress report.

    - ``phase``: what is running: ``"train"``, ``"centers"``, ``"features"`` (analyze), a demo
      stage name, ...
    - ``done`` / ``total``: completed units of this pass (``total`` ``None`` when unknown).
    - ``epoch`` / ``epochs``: 1-based epoch and the planned count, for passes that have epochs.
    - ``values``: running means to show (e.g. the loss terms so far this epoch).
    - ``record``: set once per finished epoch: that epoch's ``metrics.jsonl`` record.
    """

    phase: str
    done: int
    total: int | None = None
    epoch: int | None = None
    epochs: int | None = None
    values: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] | None = None


ProgressFn = Callable[[Progress], None]
