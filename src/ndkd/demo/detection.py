"""``ndkd demo --task detection``: ND on a detector, the paper's Faster R-CNN experiment in
miniature, on the bundled ``digit_boxes`` set (64x64 canvases holding one to four real
handwritten digits, each with its box and digit class), through the same code as
``ndkd train`` / ``centers``.

A Faster R-CNN teacher (resnet34-FPN, from scratch) is trained on its own losses, its class
means of the box-head features over sampled RoIs are computed, then resnet18-FPN students
over seeds with the detector's losses alone, + KD (T = 1 on the RoI class logits) and + KD++
(KD + ND on the box-head features). Teacher and student box heads are both 1024-d, so ND
needs no projector. Every student of one seed starts from the same weights and sees the same
batches. Evaluation: COCO AP (pycocotools) on the 200 test canvases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ndkd import experiment
from ndkd.analysis.plots import DPI
from ndkd.config import RunConfig, load_config
from ndkd.data.digit_boxes import CANVAS, MAX_DIGITS, SIZES
from ndkd.demo.pipeline import (
    DemoSettings,
    HistoryResult,
    demo_config,
    fresh_runs_folder,
    seed_summary,
    seed_table,
    train_students,
)
from ndkd.engine import LAST
from ndkd.models.detection import detect
from ndkd.progress import ProgressFn
from ndkd.tasks.detection import Target

DATASET = "digit_boxes"
METRICS = ("test_ap", "test_ap50")
KD = {"name": "kd", "weight": 1.0, "temperature": 1.0}
ND = {"name": "nd", "weight": 1.5}
METHODS: dict[str, list[dict[str, Any]]] = {"baseline": [], "kd": [KD], "kd++": [KD, ND]}
"""Student loss terms per method, added to the detector's own losses (the paper's
resnet101 -> resnet18 COCO weights)."""
LABELS = {"baseline": "detector losses", "kd": "KD", "kd++": "KD++"}
HEADERS = ("model", "runs", "AP (%)", "AP50 (%)")
DATA = {"train_sizes": [64], "test_size": 64, "max_size": 64}
"""The canvases at their own size (no resizing)."""
PROPOSALS = {"rpn_post_nms_top_n_train": 300, "rpn_pre_nms_top_n_test": 300}
"""RPN proposals of teacher and students, fewer than torchvision's (a 64x64 canvas has 1,023
anchors and at most four objects)."""
WEIGHT_DECAY = 1e-4
CENTERS = "centers.safetensors"
"""The teacher's class means, in its run folder."""
SHOWN = 4
"""Test canvases in the detections picture."""
MIN_SCORE = 0.3
"""Detections drawn in the picture: those scoring at least this."""


@dataclass(frozen=True)
class DetectionSettings(DemoSettings):
    """What the detection demo trains: :class:`DemoSettings` with detectors, plus the
    warm-up, gradient clipping, RoI sampling and an optional step budget; the defaults take
    about ten minutes on a 2-core CPU."""

    output: Path = Path("ndkd-demo-detection")
    seeds: tuple[int, ...] = (0, 1)
    teacher: str = "fasterrcnn_resnet34_fpn"
    student: str = "fasterrcnn_resnet18_fpn"
    teacher_epochs: int = 2
    student_epochs: int = 1
    batch_size: int = 8
    lr: float = 0.02
    warmup_epochs: float = 0.3
    """Linear learning-rate warm-up (``train.lr_warmup_epochs``)."""
    clip_grad_norm: float = 10.0
    teacher_rois: int = 32
    """RoIs the teacher samples per image (``box_batch_size_per_image``; torchvision: 512,
    which makes the box head most of a step's time), in its training and its class means."""
    student_rois: int = 16
    """RoIs a student samples per image: the rows of its losses, KD and ND."""
    test_proposals: int = 100
    """Proposals per test image (``rpn_post_nms_top_n_test``)."""
    steps: int = 0
    """N > 0: every run trains N steps instead of its epochs (``train.iterations``)."""


DETECTION = DetectionSettings()
QUICK_DETECTION = replace(
    DETECTION,
    seeds=(0,),
    steps=2,
    warmup_epochs=0.0,
    teacher_rois=8,
    student_rois=4,
    test_proposals=10,
)
"""A short run of the whole pipeline (for tests; its numbers mean nothing)."""


def run_detection_demo(
    settings: DetectionSettings,
    phase: Callable[[str], None] | None = None,
    progress: ProgressFn | None = None,
    step_progress: bool = False,
) -> HistoryResult:
    """Train everything; run folders go to ``settings.output / "runs"``.

    Raises:
        experiment.RunFolderError: ``settings.output`` already holds demo runs.
    """
    start = time.perf_counter()
    fresh_runs_folder(settings)
    announce = phase or (lambda text: None)
    steps = 2 + len(METHODS) * len(settings.seeds)
    length = f"{settings.steps} steps" if settings.steps else f"{settings.teacher_epochs} epochs"
    announce(f"[1/{steps}] teacher {settings.teacher}: detector losses, {length}")
    teacher = experiment.train(
        _config(settings, "teacher"), progress=progress, step_progress=step_progress
    )
    announce(f"[2/{steps}] teacher class means over its sampled RoIs of the training set")
    experiment.compute_centers(_config(settings, "centers"), progress=progress)
    trained = train_students(
        settings,
        METHODS,
        LABELS,
        lambda folder, seed, terms: _config(settings, "student", folder, seed, terms),
        announce,
        2,
        progress,
        step_progress,
    )
    students = {name: [history for _, history in runs] for name, runs in trained.items()}
    return HistoryResult(settings, teacher, students, time.perf_counter() - start)


def _config(
    settings: DetectionSettings,
    role: Literal["teacher", "centers", "student"],
    output_dir: Path | None = None,
    seed: int = 0,
    terms: list[dict[str, Any]] | None = None,
) -> RunConfig:
    """The config of the teacher's run, of its class-means pass, or of a student's run
    (in ``output_dir``, distilled from the teacher run's ``last.pt`` and class means)."""
    folder = settings.output / "runs" / "teacher"
    teacher = None if role == "teacher" else (settings.teacher, folder / LAST)
    arch, rois = (
        (settings.student, settings.student_rois)
        if role == "student"
        else (settings.teacher, settings.teacher_rois)
    )

    def options(rois: int) -> dict[str, Any]:
        return PROPOSALS | {
            "box_batch_size_per_image": rois,
            "rpn_post_nms_top_n_test": settings.test_proposals,
        }

    models = {"student": {"options": options(rois)}}
    if teacher:
        models["teacher"] = {"options": options(settings.teacher_rois)}
    train = {
        "iterations": settings.steps,
        "lr_warmup_epochs": settings.warmup_epochs,
        "clip_grad_norm": settings.clip_grad_norm,
        "weight_decay": WEIGHT_DECAY,
    }
    return demo_config(
        settings,
        output_dir or folder,
        seed,
        arch,
        terms or [],
        teacher,
        folder / CENTERS if teacher else None,
        dataset=DATASET,
        task="detection",
        sections={"data": DATA, "train": train, **models},
    )


def detection_summary(result: HistoryResult) -> dict[str, Any]:
    """What ``results.json`` holds: last-evaluation AP and AP50, seed mean and std per
    method."""
    return seed_summary(
        result.settings,
        DATASET,
        METHODS,
        result.teacher,
        result.students,
        METRICS,
        result.wall_time_s,
    ) | {"steps": result.settings.steps}


def detection_table(result: HistoryResult) -> str:
    """The Markdown table: teacher first, then the students; mean ± std over seeds."""
    return seed_table(result.settings, LABELS, detection_summary(result), METRICS, HEADERS)


def write_detection_report(result: HistoryResult) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``detections.png`` (the teacher's and the
    first KD++ student's detections on a few test canvases) into the output folder."""
    settings = result.settings
    output = settings.output
    output.mkdir(parents=True, exist_ok=True)
    json_path = output / "results.json"
    json_path.write_text(json.dumps(detection_summary(result), indent=2) + "\n")
    seed = settings.seeds[0]
    shown = {
        f"teacher\n{settings.teacher}": Path("teacher"),
        f"KD++ student, seed {seed}\n{settings.student}": Path("kd++", f"seed{seed}"),
    }
    models = {
        label: load_config(output / "runs" / folder / "config.yaml")
        for label, folder in shown.items()
    }
    picture = plot_detections(models, output / "detections.png")
    length = (
        f"{settings.steps} steps each"
        if settings.steps
        else f"teacher {settings.teacher_epochs} epochs, students {settings.student_epochs}"
    )
    md_path = output / "results.md"
    md_path.write_text(
        f"""# ndkd demo: detection

Task (`data.name: {DATASET}`, `task: detection`): {CANVAS}x{CANVAS} canvases holding one to
{MAX_DIGITS} scikit-learn handwritten digits, each with its box and digit class (10
classes); {SIZES["train"]} training and {SIZES["test"]} test canvases, the test ones made
only of held-out digit images. Teacher {settings.teacher} (detector losses), then its
class means over sampled RoIs; students {settings.student} with
{", ".join(LABELS.values())} (KD: T = 1 on the RoI class logits; KD++: KD + ND x
{ND["weight"]} on the box-head features), seeds {", ".join(str(s) for s in settings.seeds)};
all from scratch, {length}; RoIs sampled per image: teacher {settings.teacher_rois},
students {settings.student_rois}.

{detection_table(result)}

AP: COCO AP at IoU 0.5:0.95 (pycocotools) on the test canvases at the end of training;
AP50: at IoU 0.5. Mean ± sample std over seeds; the teacher is one run. Wall time
{result.wall_time_s:.0f} s.

![detections on test canvases](detections.png)
"""
    )
    return [json_path, md_path, picture]


def plot_detections(models: Mapping[str, RunConfig], path: Path) -> Path:
    """One row per run (its ``last.pt``): its detections scoring at least
    :data:`MIN_SCORE` on the first :data:`SHOWN` test canvases, boxes labelled with class and
    score, the ground-truth boxes dashed."""
    figure = Figure(figsize=(2.4 * SHOWN + 0.6, 2.6 * len(models)), layout="constrained")
    grid = figure.subplots(len(models), SHOWN, squeeze=False)
    for row, (label, config) in zip(grid, models.items()):
        images, truth, found, classes = _detections(config)
        for axes, image, target, detections in zip(row, images, truth, found):
            axes.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            for box in target["boxes"].tolist():
                axes.add_patch(_box(box, "white", "--"))
            keep = detections["scores"] >= MIN_SCORE
            for box, cls, score in zip(
                detections["boxes"][keep].tolist(),
                detections["labels"][keep].tolist(),
                detections["scores"][keep].tolist(),
            ):
                color = f"C{cls % 10}"
                axes.add_patch(_box(box, color, "-"))
                axes.text(
                    box[0],
                    box[1],
                    f"{classes[cls]} {score:.2f}",
                    color="white",
                    fontsize=7,
                    va="bottom",
                    bbox={"facecolor": color, "pad": 1, "linewidth": 0},
                )
            axes.set(xticks=[], yticks=[])
        row[0].set_ylabel(label, fontsize=8)
    figure.suptitle(f"Test canvases: detections scoring at least {MIN_SCORE} (ground truth dashed)")
    figure.savefig(path, dpi=DPI)
    return path


def _box(box: Sequence[float], color: str, style: str) -> Rectangle:
    x1, y1, x2, y2 = box
    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linestyle=style)


def _detections(
    config: RunConfig,
) -> tuple[Sequence[torch.Tensor], Sequence[Target], list[Target], list[str]]:
    """The run's model on the first :data:`SHOWN` test canvases: the images, their ground
    truth, its detections (in the canvases' pixels) and the class names."""
    model, data, device, task = experiment.trained_student(config, join_process_group=False)
    test = data.splits.test
    images, targets = test.collate([test[index] for index in range(SHOWN)])
    batch = task.to_device((images, targets), device, None)
    with torch.no_grad():
        found = detect(model.eval(), batch.images)
    found = task.eval_transform.postprocess(found, batch.images.image_sizes, batch.original_sizes)
    return images, targets, [{k: v.cpu() for k, v in d.items()} for d in found], task.classes
