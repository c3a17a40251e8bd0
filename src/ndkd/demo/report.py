"""The demo's results: ``results.json``, ``results.md`` (the table) and the PNG figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ndkd.analysis.plots import plot_embeddings_2d, plot_feature_histograms
from ndkd.analysis.summary import format_mean_std, mean_std
from ndkd.analysis.tables import markdown_table
from ndkd.data.digit_pairs import NOISE, SIZES
from ndkd.demo.pipeline import DATASET, LABELS, METHODS, DemoResult, ModelResult

HEADERS = ("model", "runs", "top-1 (%)", "feature norm", "cosine to teacher class mean")
SHOWN_CLASSES = tuple(range(0, 100, 11))
"""Classes drawn in the 2-D view: 00, 11, ..., 99 (ten of the hundred)."""


def summary(result: DemoResult) -> dict[str, Any]:
    """What ``results.json`` holds: per method the seed mean and std of each number."""
    settings = result.settings
    return {
        "dataset": DATASET,
        "teacher": {"arch": settings.teacher, "epochs": settings.teacher_epochs}
        | _numbers([result.teacher]),
        "student": {"arch": settings.student, "epochs": settings.student_epochs},
        "seeds": list(settings.seeds),
        "methods": {
            name: {"terms": METHODS[name]} | _numbers(runs)
            for name, runs in result.students.items()
        },
        "wall_time_s": round(result.wall_time_s, 1),
    }


def _numbers(runs: list[ModelResult]) -> dict[str, Any]:
    numbers: dict[str, Any] = {}
    for key, values in (
        ("accuracy", [r.accuracy for r in runs]),
        ("feature_norm", [r.stats.norm_mean for r in runs]),
        ("cosine_to_center", [r.stats.cosine_mean for r in runs]),
    ):
        numbers[key], numbers[f"{key}_std"] = mean_std(values)
    numbers["per_seed"] = [
        {
            "seed": r.seed,
            "accuracy": r.accuracy,
            "feature_norm": r.stats.norm_mean,
            "cosine_to_center": r.stats.cosine_mean,
        }
        for r in runs
    ]
    return numbers


def results_table(result: DemoResult) -> str:
    """The Markdown table: teacher first, then the students; mean ± std over seeds."""
    data = summary(result)
    settings = result.settings
    rows = [_row(f"teacher {settings.teacher}", data["teacher"], 1)]
    rows += [
        _row(f"student {settings.student} {LABELS[name]}", data["methods"][name], len(runs))
        for name, runs in result.students.items()
    ]
    return markdown_table(HEADERS, rows)


def _row(label: str, numbers: dict[str, Any], runs: int) -> list[str]:
    return [
        label,
        str(runs),
        format_mean_std(numbers["accuracy"], numbers["accuracy_std"]),
        format_mean_std(numbers["feature_norm"], numbers["feature_norm_std"]),
        format_mean_std(numbers["cosine_to_center"], numbers["cosine_to_center_std"], 3),
    ]


def write_report(result: DemoResult) -> list[Path]:
    """Write ``results.json``, ``results.md``, ``feature_norms.png`` and ``embeddings_2d.png``
    into ``result.settings.output``; returns their paths."""
    output = result.settings.output
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / "results.json"
    json_path.write_text(json.dumps(summary(result), indent=2) + "\n")
    md_path = output / "results.md"
    md_path.write_text(_markdown(result))
    return [json_path, md_path, *_plots(result, output)]


def _markdown(result: DemoResult) -> str:
    settings = result.settings
    seeds = ", ".join(str(s) for s in settings.seeds)
    return f"""# ndkd demo

Task (`data.name: digit_pairs`): pairs of scikit-learn handwritten digits side by side
(8x16 pixels), label = the two-digit number (100 classes), Gaussian pixel noise (std
{NOISE}), {SIZES["train"]} training and {SIZES["test"]} test images (test pairs use only
held-out digit images).
Teacher {settings.teacher} ({settings.teacher_epochs} epochs, CE); students
{settings.student} ({settings.student_epochs} epochs) with CE, KD (CE + KD, T = 4) and KD++
(CE + KD + ND x 2), seeds {seeds}, same initial weights and batches per seed.

{results_table(result)}

Top-1: last epoch, on the test pairs. Feature norm: mean L2 norm of the test embeddings.
Cosine: mean cosine between each test embedding and the teacher's class mean of its label
(teacher and student embeddings are both 64-d, so the cosine is direct). Mean ± sample std
over seeds; the teacher is one run. Wall time {result.wall_time_s:.0f} s.

![feature norms and directions](feature_norms.png)

![2-D embeddings](embeddings_2d.png)
"""


def _plots(result: DemoResult, output: Path) -> list[Path]:
    teacher = f"teacher {result.settings.teacher}"
    models = {teacher: [result.teacher]} | {
        LABELS[name]: runs for name, runs in result.students.items()
    }
    norms = {label: _pooled(runs, "norms") for label, runs in models.items()}
    cosines = {label: _pooled(runs, "cosines") for label, runs in models.items()}
    first_seed = {label: runs[0].embeddings for label, runs in models.items()}
    names = [f"{c:02d}" for c in SHOWN_CLASSES]
    return [
        plot_feature_histograms(norms, cosines, output / "feature_norms.png", reference=teacher),
        plot_embeddings_2d(first_seed, output / "embeddings_2d.png", SHOWN_CLASSES, names),
    ]


def _pooled(runs: list[ModelResult], attribute: str) -> torch.Tensor:
    return torch.cat([getattr(run.stats, attribute) for run in runs])
