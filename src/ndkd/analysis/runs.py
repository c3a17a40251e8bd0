"""Reading training run folders: ``config.yaml`` (the resolved config) and ``metrics.jsonl``
(one JSON object per completed epoch), as ``ndkd train`` writes them."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ndkd.config import ConfigError, RunConfig, load_config
from ndkd.engine import METRICS
from ndkd.engine.metrics import read_metrics_lines

log = logging.getLogger(__name__)

CONFIG = "config.yaml"


@dataclass(frozen=True)
class Metric:
    """A test metric in %: its ``metrics.jsonl`` key, its label in tables and plots
    (``top-1``) and its stem in CSV column names (``top1``)."""

    key: str
    label: str
    stem: str


TASK_METRICS: dict[str, tuple[Metric, Metric]] = {
    "classification": (Metric("test_top1", "top-1", "top1"), Metric("test_top5", "top-5", "top5")),
    "multilabel": (Metric("test_map", "mAP", "map"), Metric("test_cf1", "CF1", "cf1")),
    "detection": (Metric("test_ap", "AP", "ap"), Metric("test_ap50", "AP50", "ap50")),
}
"""Per ``config.task``, the (primary, secondary) metrics the analysis reports; the primary one
is the task's ``primary_metric`` and picks the best epoch."""

NUMERIC_KEYS = (
    *(metric.key for pair in TASK_METRICS.values() for metric in pair),
    "train_top1",
    "loss",
    "student_emb_norm",
)
"""Metrics the analysis reads; when present in a record they must be numbers."""


class RunReadError(ValueError):
    """A run folder lacks a file or holds one that cannot be read; the message names it."""


@dataclass(frozen=True)
class Run:
    """One run folder: its resolved config and its per-epoch records (at least one)."""

    path: Path
    config: RunConfig
    history: list[dict[str, Any]]

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def epochs_completed(self) -> int:
        return int(self.history[-1]["epoch"])

    @property
    def epochs_planned(self) -> int:
        """``train.epochs``; with an iteration budget, the passes it takes at the steps per
        pass the run logged (its epoch records hold their ``iteration``)."""
        budget = self.config.train.iterations
        if not budget:
            return self.config.train.epochs
        first = int(self.history[0].get("iteration", 0)) if self.history else 0
        return math.ceil(budget / first) if first else self.epochs_completed

    @property
    def complete(self) -> bool:
        """Whether the run trained every epoch (or every step of the budget) it asks for."""
        budget = self.config.train.iterations
        if budget:
            return bool(self.history) and int(self.history[-1].get("iteration", 0)) >= budget
        return self.epochs_completed >= self.epochs_planned

    def last(self, key: str) -> float | None:
        """``key`` in the last epoch's record (``None`` when that epoch did not log it)."""
        return self.history[-1].get(key)

    def best(self, key: str) -> tuple[float, int] | None:
        """Highest ``key`` over the epochs that logged it, and its epoch (the earliest on a tie)."""
        logged = [(r[key], r["epoch"]) for r in self.history if r.get(key) is not None]
        if not logged:
            return None
        value = max(v for v, _ in logged)
        return value, min(e for v, e in logged if v == value)

    def series(self, key: str) -> dict[int, float]:
        """``{epoch: value}`` over the epochs that logged ``key``."""
        return {r["epoch"]: r[key] for r in self.history if r.get(key) is not None}


def find_run_dirs(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run folders among ``paths``: a folder holding ``config.yaml`` or ``metrics.jsonl`` is a
    run; any other folder stands for the run folders found below it. Order kept, no repeats.

    Raises:
        RunReadError: a path is not a folder, or holds no run folder at any depth.
    """
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise RunReadError(
                f"{path}: not a folder; expected a run folder holding {CONFIG} and {METRICS}"
            )
        if _is_run(path):
            found.setdefault(path, None)
            continue
        below = sorted({hit.parent for name in (CONFIG, METRICS) for hit in path.rglob(name)})
        if not below:
            raise RunReadError(
                f"{path}: no run folder here or below (a run folder holds {CONFIG} and {METRICS})"
            )
        for run_dir in below:
            found.setdefault(run_dir, None)
    return list(found)


def _is_run(path: Path) -> bool:
    return (path / CONFIG).is_file() or (path / METRICS).is_file()


def read_run(path: str | os.PathLike[str]) -> Run:
    """Read and check one run folder.

    Raises:
        RunReadError: ``config.yaml`` or ``metrics.jsonl`` is missing or unreadable, a line of
            ``metrics.jsonl`` is not a JSON object with an integer ``epoch``, epochs are not
            increasing, or no epoch was recorded.
    """
    path = Path(path)
    config_path, metrics_path = path / CONFIG, path / METRICS
    if not config_path.is_file():
        raise RunReadError(
            f"{config_path}: missing; expected the run's resolved config (ndkd train writes it)"
        )
    if not metrics_path.is_file():
        raise RunReadError(
            f"{metrics_path}: missing; expected one JSON object per completed epoch "
            "(ndkd train writes it)"
        )
    try:
        config = load_config(config_path)
    except ConfigError as error:
        text = str(error)
        raise RunReadError(
            text if text.startswith(str(config_path)) else f"{config_path}: {text}"
        ) from error
    return Run(path, config, _read_history(metrics_path))


def _read_history(path: Path) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    try:
        lines = read_metrics_lines(path)
    except ValueError as error:
        raise RunReadError(str(error)) from error
    for number, record in lines:
        where = f"{path}, line {number}"
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise RunReadError(f"{where}: expected a JSON object with a positive integer 'epoch'")
        for key in NUMERIC_KEYS:
            value = record.get(key)
            if value is not None and not _is_number(value):
                raise RunReadError(f"{where}: {key!r} should be a finite number, found {value!r}")
        if history and epoch <= history[-1]["epoch"]:
            raise RunReadError(
                f"{where}: epoch {epoch} after epoch {history[-1]['epoch']}; expected "
                "increasing epochs"
            )
        history.append(record)
    if not history:
        raise RunReadError(
            f"{path}: no epoch recorded; expected one JSON object per completed epoch "
            "(the run has not finished its first epoch)"
        )
    log.debug("read %s: %d epochs", path, len(history))
    return history


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
