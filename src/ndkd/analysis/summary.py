"""Mean ± standard deviation over seeds, and how it is written in tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

PLUS_MINUS = "±"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``n - 1`` in the denominator) of ``values``;
    the std is ``None`` for a single value (one seed has no spread to report).

    Raises:
        ValueError: no values.
    """
    if not values:
        raise ValueError("mean_std of no values")
    count = len(values)
    mean = math.fsum(values) / count
    if count == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (count - 1))


def format_mean_std(mean: float, std: float | None, digits: int = 2) -> str:
    """``"73.12 ± 0.25"``, or ``"73.12"`` alone when there is no std (a single seed)."""
    text = f"{mean:.{digits}f}"
    return text if std is None else f"{text} {PLUS_MINUS} {std:.{digits}f}"
