"""Per row (a recipe's runs with the same epochs completed): the last epoch's primary and
secondary test metric of the row's task (top-1/top-5 for classification, mAP/CF1 for
multi-label) and the best epoch's primary metric, mean ± sample std over seeds, as table rows
and learning curves. Column names follow the tasks present (:func:`column_labels`). When a
row's recipe has a published value (:mod:`ndkd.analysis.paper`), a ``paper`` column shows it.

Every number is read from ``metrics.jsonl``; when a run lacks a value the row shows none
rather than a mean over fewer seeds than it claims.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from ndkd.analysis.paper import PaperResult, paper_result
from ndkd.analysis.plots import Curve
from ndkd.analysis.recipes import RunGroup
from ndkd.analysis.runs import TASK_METRICS, Metric
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


def group_metrics(group: RunGroup) -> tuple[Metric, Metric]:
    """The (primary, secondary) test metrics of ``group``'s task."""
    return TASK_METRICS[group.config.task]


def tasks_present(groups: Sequence[RunGroup]) -> list[str]:
    """The distinct tasks of ``groups``, in :data:`~ndkd.analysis.runs.TASK_METRICS` order."""
    found = {group.config.task for group in groups}
    return [task for task in TASK_METRICS if task in found]


def column_labels(groups: Sequence[RunGroup]) -> tuple[str, str]:
    """Labels of the primary and secondary columns: those of the groups' task (``"top-1"``,
    ``"top-5"``), or the distinct ones joined when tasks are mixed (``"top-1 / mAP"``)."""
    return _joined(groups, " / ", lambda metric: metric.label)


def _column_stems(groups: Sequence[RunGroup]) -> tuple[str, str]:
    """As :func:`column_labels`, for CSV column names (``"top1"``, ``"top1_or_map"``)."""
    return _joined(groups, "_or_", lambda metric: metric.stem)


def _joined(
    groups: Sequence[RunGroup], separator: str, text: Callable[[Metric], str]
) -> tuple[str, str]:
    pairs = [TASK_METRICS[task] for task in tasks_present(groups)]
    primary, secondary = (separator.join(text(pair[i]) for pair in pairs) for i in (0, 1))
    return primary, secondary


@dataclass(frozen=True)
class GroupResult:
    """A row's numbers (metrics of :func:`group_metrics`); ``best_epochs`` lists each run's
    best epoch by the primary metric, in the group's order."""

    group: RunGroup
    last_primary: MeanStd | None
    last_secondary: MeanStd | None
    best_primary: MeanStd | None
    best_epochs: tuple[int | None, ...]
    paper: PaperResult | None = None
    """The published value of the primary metric for the row's recipe, if any."""


def summarize(group: RunGroup) -> GroupResult:
    """Last-epoch primary/secondary and best-epoch primary metric of ``group``'s runs, over
    seeds."""
    primary, secondary = group_metrics(group)
    bests = [run.best(primary.key) for run in group.runs]
    return GroupResult(
        group,
        over_seeds([run.last(primary.key) for run in group.runs]),
        over_seeds([run.last(secondary.key) for run in group.runs]),
        over_seeds([None if b is None else b[0] for b in bests]),
        tuple(None if b is None else b[1] for b in bests),
        paper_result(group.config, primary.key),
    )


def has_paper(results: Sequence[GroupResult]) -> bool:
    """Whether any row has a published value (then the tables get a ``paper`` column)."""
    return any(r.paper is not None for r in results)


def paper_sources(results: Sequence[GroupResult]) -> list[str]:
    """The distinct sources of the rows' published values, in row order."""
    return list(dict.fromkeys(r.paper.source for r in results if r.paper is not None))


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


def result_headers(results: Sequence[GroupResult]) -> tuple[str, ...]:
    """Headers of :func:`result_rows`."""
    primary, secondary = column_labels([r.group for r in results])
    paper = (f"{primary} (%) paper",) if has_paper(results) else ()
    return (
        "recipe",
        "teacher",
        "student",
        "terms",
        "seeds",
        "epochs",
        f"{primary} (%) last epoch",
        f"{secondary} (%) last epoch",
        *paper,
    )


def result_rows(results: Sequence[GroupResult]) -> list[list[str]]:
    """The main table: the last epoch's metrics, one row per group (and the published
    primary metric when any row has one)."""
    paper = has_paper(results)
    return [
        [
            r.group.label,
            r.group.config.teacher.arch or MISSING,
            r.group.config.student.arch,
            terms_text(r.group.config),
            _seeds_text(r.group),
            epochs_text(r.group),
            _text(r.last_primary),
            _text(r.last_secondary),
            *([_number(r.paper and r.paper.value)] if paper else []),
        ]
        for r in results
    ]


def best_headers(groups: Sequence[RunGroup]) -> tuple[str, ...]:
    """Headers of :func:`best_rows`."""
    primary = column_labels(groups)[0]
    return ("recipe", "seeds", "epochs", f"{primary} (%) at best epoch", "best epoch per seed")


def best_rows(results: Sequence[GroupResult]) -> list[list[str]]:
    """The best-epoch table, kept apart from the main one."""
    return [
        [
            r.group.label,
            _seeds_text(r.group),
            epochs_text(r.group),
            _text(r.best_primary),
            ", ".join(MISSING if e is None else str(e) for e in r.best_epochs),
        ]
        for r in results
    ]


def run_headers(groups: Sequence[RunGroup]) -> tuple[str, ...]:
    """Headers of :func:`run_rows`."""
    primary, secondary = column_labels(groups)
    return (
        "run folder",
        "recipe",
        "seed",
        "epochs",
        f"{primary} (%) last epoch",
        f"{secondary} (%) last epoch",
        f"{primary} (%) best epoch",
        "best epoch",
    )


def run_rows(groups: Sequence[RunGroup]) -> list[list[str]]:
    """One row per run, the values as read (rounded to 2 decimals)."""
    rows = []
    for group in groups:
        primary, secondary = group_metrics(group)
        for run in group.runs:
            best = run.best(primary.key)
            rows.append(
                [
                    str(run.path),
                    group.label,
                    str(run.seed),
                    epochs_text(group),
                    _number(run.last(primary.key)),
                    _number(run.last(secondary.key)),
                    MISSING if best is None else f"{best[0]:.2f}",
                    MISSING if best is None else str(best[1]),
                ]
            )
    return rows


def _number(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def csv_headers(results: Sequence[GroupResult]) -> tuple[str, ...]:
    """Headers of :func:`csv_rows`."""
    primary, secondary = _column_stems([r.group for r in results])
    numbers = (f"last_{primary}", f"last_{secondary}", f"best_epoch_{primary}")
    return (
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
        *(f"{stem}_{part}" for stem in numbers for part in ("mean", "std")),
        "best_epochs",
        *((f"paper_{primary}", "paper_source") if has_paper(results) else ()),
    )


def csv_rows(results: Sequence[GroupResult]) -> list[list[object]]:
    """``results.csv``: full-precision numbers, an empty std for one seed."""
    paper = has_paper(results)
    rows = []
    for r in results:
        group = r.group
        numbers: list[object] = []
        for value in (r.last_primary, r.last_secondary, r.best_primary):
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
                *((r.paper and r.paper.value, r.paper and r.paper.source) if paper else ()),
            ]
        )
    return rows


def run_csv_headers(groups: Sequence[RunGroup]) -> tuple[str, ...]:
    """Headers of :func:`run_csv_rows`."""
    primary, secondary = _column_stems(groups)
    return (
        "run_dir",
        "recipe",
        "recipe_id",
        "seed",
        "epochs_completed",
        "epochs_planned",
        "complete",
        f"last_{primary}",
        f"last_{secondary}",
        f"best_epoch_{primary}",
        "best_epoch",
    )


def run_csv_rows(groups: Sequence[RunGroup]) -> list[list[object]]:
    """``runs.csv``: one row per run, the values exactly as read."""
    rows = []
    for group in groups:
        primary, secondary = group_metrics(group)
        for run in group.runs:
            best = run.best(primary.key) or (None, None)
            rows.append(
                [
                    str(run.path),
                    group.label,
                    group.recipe_id,
                    run.seed,
                    run.epochs_completed,
                    run.epochs_planned,
                    run.complete,
                    run.last(primary.key),
                    run.last(secondary.key),
                    *best,
                ]
            )
    return rows


def curves(
    groups: Sequence[RunGroup],
    key: str | Callable[[RunGroup], str],
    labels: Mapping[str, str] | None = None,
) -> dict[str, Curve]:
    """Per group, ``key`` (or ``key(group)``) over the epochs every run logged it: mean and
    sample std over seeds (zero std for one seed); groups where no epoch qualifies are left
    out. Keyed by :func:`row_label` of ``labels[group.label]`` (default: the label itself)."""
    labels = labels or {}
    found: dict[str, Curve] = {}
    for group in groups:
        name = key(group) if callable(key) else key
        series = [run.series(name) for run in group.runs]
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
