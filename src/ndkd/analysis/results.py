"""Per row (a recipe's runs with the same epochs completed): last-epoch top-1/top-5 and the
best epoch's top-1, mean ± sample std over seeds, as table rows and learning curves.

Every number is read from ``metrics.jsonl``; when a run lacks a value the row shows none
rather than a mean over fewer seeds than it claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from ndkd.analysis.plots import Curve
from ndkd.analysis.recipes import RunGroup
from ndkd.analysis.summary import format_mean_std, mean_std
from ndkd.config import RunConfig

MISSING = "—"


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample std over seeds (``std`` is ``None`` for one seed)."""

    mean: float
    std: float | None

    def text(self, digits: int = 2) -> str:
        return format_mean_std(self.mean, self.std, digits)


def over_seeds(values: Sequence[float | None]) -> MeanStd | None:
    """:class:`MeanStd` of ``values``; ``None`` when there are none or any is missing."""
    if not values or any(v is None for v in values):
        return None
    return MeanStd(*mean_std([float(v) for v in values]))


@dataclass(frozen=True)
class GroupResult:
    """A row's numbers; ``best_epochs`` lists each run's best epoch, in the group's order."""

    group: RunGroup
    last_top1: MeanStd | None
    last_top5: MeanStd | None
    best_top1: MeanStd | None
    best_epochs: tuple[int | None, ...]


def summarize(group: RunGroup) -> GroupResult:
    """Last-epoch top-1/top-5 and best-epoch top-1 of ``group``'s runs, over seeds."""
    bests = [run.best("test_top1") for run in group.runs]
    return GroupResult(
        group,
        over_seeds([run.last("test_top1") for run in group.runs]),
        over_seeds([run.last("test_top5") for run in group.runs]),
        over_seeds([None if b is None else b[0] for b in bests]),
        tuple(None if b is None else b[1] for b in bests),
    )


def terms_text(config: RunConfig) -> str:
    """``"ce×1 + kd×1 + nd×2"``: each loss term with its weight."""
    return " + ".join(f"{term.name}×{term.weight:g}" for term in config.terms)


def epochs_text(group: RunGroup) -> str:
    """``"240"`` for a finished row, ``"37 of 240, INCOMPLETE"`` otherwise."""
    if group.complete:
        return str(group.epochs_completed)
    return f"{group.epochs_completed} of {group.epochs_planned}, INCOMPLETE"


def row_label(group: RunGroup, label: str | None = None) -> str:
    """``label`` (default: the recipe label), marked when the row's runs stopped early."""
    label = group.label if label is None else label
    if group.complete:
        return label
    return f"{label} (incomplete, {group.epochs_completed}/{group.epochs_planned} epochs)"


def short_labels(labels: Sequence[str]) -> dict[str, str]:
    """Recipe labels for legends: without the leading path components all of them share
    (one label keeps its last two components)."""
    parts = {label: PurePath(label).parts for label in labels}
    if not parts:
        return {}
    if len(parts) == 1:
        ((label, split),) = parts.items()
        return {label: str(PurePath(*split[-2:]))}
    common = 0
    while all(len(p) > common + 1 for p in parts.values()) and (
        len({p[common] for p in parts.values()}) == 1
    ):
        common += 1
    return {label: str(PurePath(*split[common:])) for label, split in parts.items()}


def _text(value: MeanStd | None) -> str:
    return MISSING if value is None else value.text()


def _seeds_text(group: RunGroup) -> str:
    return f"{len(group.runs)} ({', '.join(str(s) for s in group.seeds)})"


RESULT_HEADERS = (
    "recipe",
    "teacher",
    "student",
    "terms",
    "seeds",
    "epochs",
    "top-1 (%) last epoch",
    "top-5 (%) last epoch",
)


def result_rows(results: Sequence[GroupResult]) -> list[list[str]]:
    """The main table: last-epoch accuracy, one row per group."""
    return [
        [
            r.group.label,
            r.group.config.teacher.arch or MISSING,
            r.group.config.student.arch,
            terms_text(r.group.config),
            _seeds_text(r.group),
            epochs_text(r.group),
            _text(r.last_top1),
            _text(r.last_top5),
        ]
        for r in results
    ]


BEST_HEADERS = ("recipe", "seeds", "epochs", "top-1 (%) at best epoch", "best epoch per seed")


def best_rows(results: Sequence[GroupResult]) -> list[list[str]]:
    """The best-epoch table, kept apart from the main one."""
    return [
        [
            r.group.label,
            _seeds_text(r.group),
            epochs_text(r.group),
            _text(r.best_top1),
            ", ".join(MISSING if e is None else str(e) for e in r.best_epochs),
        ]
        for r in results
    ]


RUN_HEADERS = (
    "run folder",
    "recipe",
    "seed",
    "epochs",
    "top-1 (%) last epoch",
    "top-5 (%) last epoch",
    "top-1 (%) best epoch",
    "best epoch",
)


def run_rows(groups: Sequence[RunGroup]) -> list[list[str]]:
    """One row per run, the values as read (rounded to 2 decimals)."""
    rows = []
    for group in groups:
        for run in group.runs:
            best = run.best("test_top1")
            rows.append(
                [
                    str(run.path),
                    group.label,
                    str(run.seed),
                    epochs_text(group),
                    _number(run.last("test_top1")),
                    _number(run.last("test_top5")),
                    MISSING if best is None else f"{best[0]:.2f}",
                    MISSING if best is None else str(best[1]),
                ]
            )
    return rows


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


CSV_HEADERS = (
    "recipe",
    "recipe_id",
    "teacher",
    "student",
    "terms",
    "seeds",
    "seed_list",
    "epochs_completed",
    "epochs_planned",
    "complete",
    "last_top1_mean",
    "last_top1_std",
    "last_top5_mean",
    "last_top5_std",
    "best_epoch_top1_mean",
    "best_epoch_top1_std",
    "best_epochs",
)


def csv_rows(results: Sequence[GroupResult]) -> list[list[object]]:
    """``results.csv``: full-precision numbers, an empty std for one seed."""
    rows = []
    for r in results:
        group = r.group
        numbers: list[object] = []
        for value in (r.last_top1, r.last_top5, r.best_top1):
            numbers += [None, None] if value is None else [value.mean, value.std]
        rows.append(
            [
                group.label,
                group.recipe_id,
                group.config.teacher.arch,
                group.config.student.arch,
                terms_text(group.config),
                len(group.runs),
                ";".join(str(s) for s in group.seeds),
                group.epochs_completed,
                group.epochs_planned,
                group.complete,
                *numbers,
                ";".join("" if e is None else str(e) for e in r.best_epochs),
            ]
        )
    return rows


RUN_CSV_HEADERS = (
    "run_dir",
    "recipe",
    "recipe_id",
    "seed",
    "epochs_completed",
    "epochs_planned",
    "complete",
    "last_top1",
    "last_top5",
    "best_epoch_top1",
    "best_epoch",
)


def run_csv_rows(groups: Sequence[RunGroup]) -> list[list[object]]:
    """``runs.csv``: one row per run, the values exactly as read."""
    rows = []
    for group in groups:
        for run in group.runs:
            best = run.best("test_top1") or (None, None)
            rows.append(
                [
                    str(run.path),
                    group.label,
                    group.recipe_id,
                    run.seed,
                    run.epochs_completed,
                    run.epochs_planned,
                    run.complete,
                    run.last("test_top1"),
                    run.last("test_top5"),
                    *best,
                ]
            )
    return rows


def curves(
    groups: Sequence[RunGroup], key: str, labels: Mapping[str, str] | None = None
) -> dict[str, Curve]:
    """Per group, ``key`` over the epochs every run logged it: mean and sample std over seeds
    (zero std for one seed); groups where no epoch qualifies are left out. Keyed by
    :func:`row_label` of ``labels[group.label]`` (default: the label itself)."""
    labels = labels or {}
    found: dict[str, Curve] = {}
    for group in groups:
        series = [run.series(key) for run in group.runs]
        epochs = sorted(set.intersection(*(set(s) for s in series)))
        if not epochs:
            continue
        stats = [mean_std([s[e] for s in series]) for e in epochs]
        found[row_label(group, labels.get(group.label))] = Curve(
            np.array(epochs),
            np.array([m for m, _ in stats]),
            np.array([0.0 if s is None else s for _, s in stats]),
        )
    return found
