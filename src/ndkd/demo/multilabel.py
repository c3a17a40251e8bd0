"""``ndkd demo --task multilabel``: LSHFM's multi-label feature mimicking on the bundled
``digit_canvas`` set (several real handwritten digits per image, labels = the digits
present), through the same code as ``ndkd train``.

A teacher is trained with BCE, then students over seeds with BCE alone, BCE + L2 feature
mimicking and BCE + LSHL2 (the LSH loss with the median hash bias, plus L2). Teacher
(resnet20) and student (resnet8) both have 64-d embeddings, so the mimicking needs no
projection and the authors' first stage (which only trains that projection) has nothing to
do. Every student of one seed starts from the same weights and sees the same batches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ndkd import experiment
from ndkd.analysis.plots import Curve, plot_learning_curves
from ndkd.config import RunConfig
from ndkd.demo.pipeline import (
    QUICK,
    DemoSettings,
    HistoryResult,
    demo_config,
    fresh_runs_folder,
    seed_summary,
    seed_table,
    train_students,
)
from ndkd.engine import LAST
from ndkd.progress import ProgressFn

DATASET = "digit_canvas"
METRIC = "test_map"
BCE = {"name": "bce", "weight": 1.0}
METHODS: dict[str, list[dict[str, Any]]] = {
    "baseline": [BCE],
    "l2": [BCE, {"name": "l2", "weight": 1.0, "dims": "mean"}],
    "lshl2": [BCE, {"name": "lshl2", "weight": 1.0, "bias": "median"}],
}
"""Student loss terms per method."""
LABELS = {"baseline": "BCE", "l2": "BCE + L2", "lshl2": "BCE + LSHL2"}
HEADERS = ("model", "runs", "mAP (%)", "CF1 (%)", "OF1 (%)")


MULTILABEL = DemoSettings(output=Path("ndkd-demo-multilabel"))
"""The demo's defaults (the single-label demo's models and schedule): a few minutes on a
2-core CPU."""
QUICK_MULTILABEL = replace(QUICK, output=MULTILABEL.output)
"""A short run of the whole pipeline (for tests; its numbers mean nothing)."""


def run_multilabel_demo(
    settings: DemoSettings,
    phase: Callable[[str], None] | None = None,
    progress: ProgressFn | None = None,
    step_progress: bool = False,
) -> HistoryResult:
    """Train everything; run folders go to ``settings.output / "runs"``.

    Raises:
        experiment.RunFolderError: ``settings.output`` already holds demo runs.
    """
    start = time.perf_counter()
    runs = fresh_runs_folder(settings)
    announce = phase or (lambda text: None)
    steps = 1 + len(METHODS) * len(settings.seeds)
    announce(f"[1/{steps}] teacher {settings.teacher}: BCE, {settings.teacher_epochs} epochs")
    teacher_config = _config(settings, runs / "teacher", 0, settings.teacher, [BCE])
    teacher = experiment.train(teacher_config, progress=progress, step_progress=step_progress)
    checkpoint = runs / "teacher" / LAST
    trained = train_students(
        settings,
        METHODS,
        LABELS,
        lambda folder, seed, terms: _config(
            settings, folder, seed, settings.student, terms, checkpoint
        ),
        announce,
        1,
        progress,
        step_progress,
    )
    students = {name: [history for _, history in runs] for name, runs in trained.items()}
    return HistoryResult(settings, teacher, students, time.perf_counter() - start)


def _config(
    settings: DemoSettings,
    output_dir: Path,
    seed: int,
    arch: str,
    terms: list[dict[str, Any]],
    teacher: Path | None = None,
) -> RunConfig:
    model = (settings.teacher, teacher) if teacher else None
    return demo_config(
        settings, output_dir, seed, arch, terms, model, dataset=DATASET, task="multilabel"
    )


KEYS = (METRIC, "test_cf1", "test_of1")


def multilabel_summary(result: HistoryResult) -> dict[str, Any]:
    """What ``results.json`` holds: last-epoch metrics, seed mean and std per method."""
    return seed_summary(
        result.settings,
        DATASET,
        METHODS,
        result.teacher,
        result.students,
        KEYS,
        result.wall_time_s,
    )


def multilabel_table(result: HistoryResult) -> str:
    """The Markdown table: teacher first, then the students; mean ± std over seeds."""
    return seed_table(result.settings, LABELS, multilabel_summary(result), KEYS, HEADERS)


def write_multilabel_report(result: HistoryResult) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``map_curves.png`` into the output folder."""
    output = result.settings.output
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / "results.json"
    json_path.write_text(json.dumps(multilabel_summary(result), indent=2) + "\n")
    curves = {LABELS[name]: _curve(runs) for name, runs in result.students.items()}
    plot = plot_learning_curves([("Students, test mAP", "mAP (%)", curves)], output / "map.png")
    settings = result.settings
    md_path = output / "results.md"
    md_path.write_text(
        f"""# ndkd demo: multi-label

Task (`data.name: {DATASET}`, `task: multilabel`): one to three scikit-learn handwritten
digits on one canvas, labels = the set of digits present (10 classes); test canvases use
only held-out digit images. Teacher {settings.teacher} ({settings.teacher_epochs} epochs,
BCE); students {settings.student} ({settings.student_epochs} epochs) with {
            ", ".join(LABELS.values())
        }, seeds {", ".join(str(s) for s in settings.seeds)}.

{multilabel_table(result)}

mAP: mean over classes of the (non-interpolated) average precision of the test scores, last
epoch; CF1/OF1: per-class and overall F1 at score 0.5. Mean ± sample std over seeds; the
teacher is one run. Wall time {result.wall_time_s:.0f} s.

![test mAP](map.png)
"""
    )
    return [json_path, md_path, plot]


def _curve(histories: list[list[dict[str, Any]]]) -> Curve:
    rows = [[(r["epoch"], r[METRIC]) for r in h if METRIC in r] for h in histories]
    epochs = np.array([epoch for epoch, _ in rows[0]], dtype=float)
    values = np.array([[value for _, value in row] for row in rows], dtype=float)
    std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(epochs))
    return Curve(epochs, values.mean(axis=0), std)
