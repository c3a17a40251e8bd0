"""The files of ``ndkd analyze``: ``results.md``, ``results.csv``, ``runs.csv`` and
``learning_curves.png``; with feature statistics also ``features.md``, ``features.json`` and
``feature_norms.png``. Existing files of these names in the output folder are replaced."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ndkd.analysis.features import FeatureStats
from ndkd.analysis.plots import plot_feature_histograms, plot_learning_curves
from ndkd.analysis.recipes import IGNORED_KEYS, RunGroup
from ndkd.analysis.results import (
    MISSING,
    GroupResult,
    MeanStd,
    best_headers,
    best_rows,
    column_labels,
    csv_headers,
    csv_rows,
    curves,
    group_metrics,
    over_seeds,
    paper_sources,
    result_headers,
    result_rows,
    row_label,
    run_csv_headers,
    run_csv_rows,
    run_headers,
    run_rows,
    short_labels,
    summarize,
    tasks_present,
)
from ndkd.analysis.run_features import RunFeatures, TeacherFeatures
from ndkd.analysis.runs import TASK_METRICS
from ndkd.analysis.tables import markdown_table, write_csv

log = logging.getLogger(__name__)

RESULTS_MD, RESULTS_CSV, RUNS_CSV = "results.md", "results.csv", "runs.csv"
CURVES_PNG = "learning_curves.png"
FEATURES_MD, FEATURES_JSON, FEATURES_PNG = "features.md", "features.json", "feature_norms.png"
CURVE_PANELS = (
    ("loss", "Training loss", "sum of the loss terms"),
    ("student_emb_norm", "Student embedding norm (training)", "mean L2 norm"),
)
"""Learning-curve panels after the first (each group's primary test metric):
``(metrics.jsonl key, title, y label)``."""


def results_table(results: Sequence[GroupResult]) -> str:
    """The main Markdown table: the last epoch's metrics, mean ± std over seeds."""
    return markdown_table(result_headers(results), result_rows(results))


def write_results(groups: Sequence[RunGroup], output: str | os.PathLike[str]) -> list[Path]:
    """Write the tables and the learning curves of ``groups`` into ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    results = [summarize(group) for group in groups]
    markdown = output / RESULTS_MD
    markdown.write_text(results_markdown(results))
    short = short_labels([group.label for group in groups])
    primary = column_labels(groups)[0]
    first = (lambda group: group_metrics(group)[0].key, f"Test {primary}", f"{primary} (%)")
    panels = [
        (title, ylabel, curves(groups, key, short)) for key, title, ylabel in (first, *CURVE_PANELS)
    ]
    written = [
        markdown,
        write_csv(output / RESULTS_CSV, csv_headers(results), csv_rows(results)),
        write_csv(output / RUNS_CSV, run_csv_headers(groups), run_csv_rows(groups)),
        plot_learning_curves(panels, output / CURVES_PNG),
    ]
    log.info("wrote %s", ", ".join(str(p) for p in written))
    return written


def results_markdown(results: Sequence[GroupResult]) -> str:
    """``results.md``: the main table, the best-epoch table apart, the runs, the curves."""
    groups = [r.group for r in results]
    ignored = ", ".join(f"`{key}`" for key in IGNORED_KEYS)
    incomplete = [g for g in groups if not g.complete]
    warning = ""
    if incomplete:
        listed = "; ".join(
            f"{g.label}: {g.epochs_completed} of {g.epochs_planned} epochs" for g in incomplete
        )
        warning = (
            f"\n**Incomplete runs** (fewer epochs than `train.epochs`, in rows of their own, "
            f"never averaged with finished runs): {listed}.\n"
        )
    primary = column_labels(groups)[0]
    return f"""# Results

{_measured(groups)} at the **last epoch**, mean ± sample std over seeds (one seed: no std).
A row holds the runs of one recipe that completed the same number of epochs. Runs share a
recipe when their `config.yaml` are equal except for: {ignored}.

{results_table(results)}
{paper_note(results)}{warning}
## Best epoch (for reference, not the result to report)

The highest test {primary} over each run's evaluated epochs, mean ± std over seeds. The epoch
is picked on the test set, so it overstates the result; report the last epoch above.

{markdown_table(best_headers(groups), best_rows(results))}

## Runs

{markdown_table(run_headers(groups), run_rows(groups))}

![learning curves]({CURVES_PNG})
"""


def paper_note(results: Sequence[GroupResult]) -> str:
    """The sources of the ``paper`` column, one line each (empty without the column)."""
    sources = paper_sources(results)
    if not sources:
        return ""
    listed = "".join(f"\n- {source}" for source in sources)
    return (
        "\nThe paper column: the published value for the recipe (as published: the epoch and "
        f"the seeds it reports may differ from this table's). Sources:{listed}\n"
    )


def _measured(groups: Sequence[RunGroup]) -> str:
    """``"Test top-1 and top-5"``; with several tasks each pair names its runs' task."""
    tasks = tasks_present(groups)
    pairs = []
    for task in tasks:
        primary, secondary = TASK_METRICS[task]
        which = f" (`task: {task}`)" if len(tasks) > 1 else ""
        pairs.append(f"{primary.label} and {secondary.label}{which}")
    return f"Test {' or '.join(pairs)}"


def write_features(
    groups: Sequence[RunGroup], features: Sequence[RunFeatures], output: str | os.PathLike[str]
) -> list[Path]:
    """Write ``features.json``, ``features.md`` and ``feature_norms.png`` into ``output``;
    ``features`` holds one entry per run of ``groups``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    by_run = {f.run.path: f for f in features}
    rows = [(group, [by_run[run.path] for run in group.runs]) for group in groups]
    teachers = _teacher_labels(features)
    data = features_summary(rows, teachers)
    json_path = output / FEATURES_JSON
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path = output / FEATURES_MD
    md_path.write_text(_features_markdown(data))
    return [json_path, md_path, _feature_plot(rows, teachers, output / FEATURES_PNG)]


def _teacher_labels(features: Sequence[RunFeatures]) -> dict[TeacherFeatures, str]:
    labels: dict[TeacherFeatures, str] = {}
    for item in features:
        if item.teacher is not None and item.teacher not in labels:
            labels[item.teacher] = f"teacher {item.teacher.arch}"
    names = list(labels.values())
    for index, (teacher, label) in enumerate(list(labels.items()), start=1):
        if names.count(label) > 1:
            labels[teacher] = f"{label} #{index}"
    return labels


def features_summary(
    rows: Sequence[tuple[RunGroup, Sequence[RunFeatures]]],
    teachers: dict[TeacherFeatures, str],
) -> dict[str, Any]:
    """What ``features.json`` holds: per teacher and per run the mean and per-image std of the
    embedding norm and of the cosine to the class mean (``null`` when absent); per row the
    mean ± std over seeds of the per-run means."""
    recipes = []
    for group, items in rows:
        norm = over_seeds([item.student.norm_mean for item in items])
        cosine = over_seeds([item.student.cosine_mean for item in items])
        recipes.append(
            {
                "recipe": group.label,
                "recipe_id": group.recipe_id,
                "epochs_completed": group.epochs_completed,
                "epochs_planned": group.epochs_planned,
                "complete": group.complete,
                "student": group.config.student.arch,
                "teacher": teachers.get(items[0].teacher),
                "norm_mean_over_seeds": _mean_std_dict(norm),
                "cosine_mean_over_seeds": _mean_std_dict(cosine),
                "runs": [
                    {"run_dir": str(item.run.path), "seed": item.run.seed}
                    | _stats_dict(item.student)
                    for item in items
                ],
            }
        )
    return {
        "split": "test",
        "teachers": [
            {
                "label": label,
                "arch": teacher.arch,
                "checkpoint": teacher.checkpoint,
                "dataset": teacher.dataset,
            }
            | _stats_dict(teacher.stats)
            for teacher, label in teachers.items()
        ],
        "recipes": recipes,
    }


def _stats_dict(stats: FeatureStats) -> dict[str, Any]:
    cosines = stats.cosines
    return {
        "samples": int(stats.norms.numel()),
        "norm_mean": stats.norm_mean,
        "norm_std": _std(stats.norms),
        "cosine_mean": stats.cosine_mean,
        "cosine_std": None if cosines is None else _std(cosines),
    }


def _std(values: torch.Tensor) -> float | None:
    return float(values.std()) if values.numel() > 1 else None


def _mean_std_dict(value: MeanStd | None) -> dict[str, float | None] | None:
    return None if value is None else {"mean": value.mean, "std": value.std}


def _features_markdown(data: dict[str, Any]) -> str:
    teacher_rows = [
        [
            t["label"],
            t["checkpoint"] or MISSING,
            t["dataset"],
            str(t["samples"]),
            _per_image(t["norm_mean"], t["norm_std"], 2),
            _per_image(t["cosine_mean"], t["cosine_std"], 3),
        ]
        for t in data["teachers"]
    ]
    student_rows = [
        [
            r["recipe"],
            r["student"],
            r["teacher"] or MISSING,
            f"{len(r['runs'])} ({', '.join(str(run['seed']) for run in r['runs'])})",
            str(r["epochs_completed"]) + ("" if r["complete"] else ", INCOMPLETE"),
            _over_seeds(r["norm_mean_over_seeds"], 2),
            _over_seeds(r["cosine_mean_over_seeds"], 3),
        ]
        for r in data["recipes"]
    ]
    teacher_headers = (
        "teacher",
        "checkpoint",
        "dataset",
        "test images",
        "feature norm",
        "cosine to class mean",
    )
    student_headers = (
        "recipe",
        "student",
        "teacher",
        "seeds",
        "epochs",
        "feature norm",
        "cosine to teacher class mean",
    )
    return f"""# Feature norm and direction (test split)

Feature: the penultimate embedding (input of the final linear classifier). Norm: its L2 norm.
Cosine: between each embedding and the teacher's class mean of its label (`centers.path`);
{MISSING} where the embedding dim differs from the class means' dim (e.g. a student
distilled through a projector) or the run has no class-means file.

## Teachers (mean ± std over test images)

{markdown_table(teacher_headers, teacher_rows)}

## Students (each run's mean over test images; mean ± std over seeds)

{markdown_table(student_headers, student_rows)}

![feature norms and directions]({FEATURES_PNG})
"""


def _per_image(mean: float | None, std: float | None, digits: int) -> str:
    return MISSING if mean is None else MeanStd(mean, std).text(digits)


def _over_seeds(value: dict[str, float | None] | None, digits: int) -> str:
    return MISSING if value is None else MeanStd(value["mean"], value["std"]).text(digits)


def _feature_plot(
    rows: Sequence[tuple[RunGroup, Sequence[RunFeatures]]],
    teachers: dict[TeacherFeatures, str],
    path: Path,
) -> Path:
    norms = {label: t.stats.norms for t, label in teachers.items()}
    cosines = {
        label: t.stats.cosines for t, label in teachers.items() if t.stats.cosines is not None
    }
    short = short_labels([group.label for group, _ in rows])
    for group, items in rows:
        label = row_label(group, short[group.label])
        norms[label] = torch.cat([item.student.norms for item in items])
        if all(item.student.cosines is not None for item in items):
            cosines[label] = torch.cat([item.student.cosines for item in items])
    reference = next(iter(teachers.values())) if len(teachers) == 1 else None
    return plot_feature_histograms(norms, cosines, path, reference=reference)
