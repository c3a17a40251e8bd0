"""``ndkd demo``: a teacher, its class means, then CE, KD and KD++ students over seeds, all
on the bundled ``digit_pairs`` data, through the same code as ``ndkd train`` / ``centers``.

Every run is an ordinary run folder made from an ordinary config (``config.yaml``,
``metrics.jsonl``, ``last.pt``): ``ndkd train -c RUN/config.yaml`` repeats it. Every student
run of one seed starts from the same initial weights and sees the same batches; only the
loss terms differ. Teacher (resnet20) and student (resnet8) both have 64-d embeddings, so
the ND term needs no projector and the cosine between a student embedding and the teacher's
class mean is direct.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ndkd import experiment
from ndkd.analysis.features import FeatureStats, feature_stats
from ndkd.analysis.run_features import trained_student_embeddings
from ndkd.analysis.summary import format_mean_std, mean_std
from ndkd.analysis.tables import markdown_table
from ndkd.centers import ClassMeans
from ndkd.config import RunConfig, from_dict
from ndkd.engine import LAST
from ndkd.models import create_model
from ndkd.progress import ProgressFn

log = logging.getLogger(__name__)

DATASET = "digit_pairs"
CE = {"name": "ce", "weight": 1.0}
KD = {"name": "kd", "weight": 1.0, "temperature": 4.0}
ND = {"name": "nd", "weight": 2.0}
METHODS: dict[str, list[dict[str, Any]]] = {"ce": [CE], "kd": [CE, KD], "kd++": [CE, KD, ND]}
"""Student loss terms per method (the weights of the paper's resnet56 -> resnet20 pair)."""
LABELS = {"ce": "CE", "kd": "KD", "kd++": "KD++"}
History = list[dict[str, Any]]
"""A run's metrics records (its ``metrics.jsonl``), one per epoch."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo trains; the defaults take a few minutes on a 2-core CPU."""

    output: Path = Path("ndkd-demo")
    seeds: tuple[int, ...] = (0, 1, 2)
    teacher: str = "resnet20"
    student: str = "resnet8"
    teacher_epochs: int = 15
    student_epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    device: str = "auto"


QUICK = DemoSettings(seeds=(0, 1), teacher_epochs=1, student_epochs=1)
"""A short run of the whole pipeline (for tests; its numbers mean nothing)."""


@dataclass
class ModelResult:
    """One trained model: last-epoch test top-1 and its test-set feature statistics."""

    seed: int
    accuracy: float
    stats: FeatureStats
    embeddings: tuple[torch.Tensor, torch.Tensor]


@dataclass
class DemoResult:
    settings: DemoSettings
    teacher: ModelResult
    students: dict[str, list[ModelResult]]
    wall_time_s: float


def run_demo(
    settings: DemoSettings,
    phase: Callable[[str], None] | None = None,
    progress: ProgressFn | None = None,
    step_progress: bool = False,
) -> DemoResult:
    """Train and evaluate everything; run folders go to ``settings.output / "runs"``.

    ``phase`` receives one line per step of the plan, ``progress`` the trainer's reports
    (every epoch, and within epochs when ``step_progress``) and the class-means pass's.

    Raises:
        experiment.RunFolderError: ``settings.output`` already holds demo runs.
    """
    start = time.perf_counter()
    _check_embedding_dims(settings)
    runs = fresh_runs_folder(settings)
    announce = phase or (lambda text: None)
    steps = 2 + len(METHODS) * len(settings.seeds)

    teacher_config = demo_config(settings, runs / "teacher", 0, settings.teacher, [CE])
    announce(f"[1/{steps}] teacher {settings.teacher}: CE, {settings.teacher_epochs} epochs")
    history = experiment.train(teacher_config, progress=progress, step_progress=step_progress)

    teacher = (settings.teacher, runs / "teacher" / LAST)
    centers_path = runs / "teacher" / "centers.safetensors"
    announce(f"[2/{steps}] teacher class means over the training set")
    experiment.compute_centers(
        demo_config(settings, runs / "teacher", 0, settings.teacher, [CE], teacher, centers_path),
        progress=progress,
    )
    centers = ClassMeans.load(centers_path)
    teacher_result = _evaluate(teacher_config, 0, history[-1]["test_top1"], centers)

    trained = train_students(
        settings,
        METHODS,
        LABELS,
        lambda folder, seed, terms: demo_config(
            settings, folder, seed, settings.student, terms, teacher, centers_path
        ),
        announce,
        2,
        progress,
        step_progress,
    )
    students = {
        name: [
            _evaluate(config, config.seed, history[-1]["test_top1"], centers)
            for config, history in runs
        ]
        for name, runs in trained.items()
    }
    return DemoResult(settings, teacher_result, students, time.perf_counter() - start)


@dataclass
class HistoryResult:
    """A demo's teacher and students as their metrics histories (one ``metrics.jsonl`` per
    run), per method one history per seed."""

    settings: DemoSettings
    teacher: History
    students: dict[str, list[History]]
    wall_time_s: float


def train_students(
    settings: DemoSettings,
    methods: Mapping[str, list[dict[str, Any]]],
    labels: Mapping[str, str],
    config: Callable[[Path, int, list[dict[str, Any]]], RunConfig],
    announce: Callable[[str], None],
    done: int,
    progress: ProgressFn | None = None,
    step_progress: bool = False,
) -> dict[str, list[tuple[RunConfig, History]]]:
    """Train a student per seed and method, seed by seed, from ``config(folder, seed,
    terms)`` into ``settings.output/runs/<method>/seed<seed>``; ``announce`` gets a
    ``[step/steps]`` line for each, numbered after the plan's ``done`` earlier steps.

    Returns:
        Per method, each seed's config and metrics history.
    """
    runs = settings.output / "runs"
    steps = done + len(methods) * len(settings.seeds)
    students: dict[str, list[tuple[RunConfig, History]]] = {name: [] for name in methods}
    for seed in settings.seeds:
        for name, terms in methods.items():
            done += 1
            announce(f"[{done}/{steps}] student {settings.student} {labels[name]}, seed {seed}")
            run = config(runs / name / f"seed{seed}", seed, terms)
            history = experiment.train(run, progress=progress, step_progress=step_progress)
            students[name].append((run, history))
    return students


def fresh_runs_folder(settings: DemoSettings) -> Path:
    """``settings.output / "runs"``, refused when it already holds runs.

    Raises:
        experiment.RunFolderError: it holds demo runs.
    """
    runs = settings.output / "runs"
    if runs.exists() and any(runs.iterdir()):
        raise experiment.RunFolderError(
            f"{str(runs)!r} already holds demo runs; choose another --output or remove it"
        )
    return runs


def demo_config(
    settings: DemoSettings,
    output_dir: Path,
    seed: int,
    arch: str,
    terms: list[dict[str, Any]],
    teacher: tuple[str, Path] | None = None,
    centers: Path | None = None,
    *,
    dataset: str = DATASET,
    task: str = "classification",
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> RunConfig:
    """A demo run's config, validated like any user's (``ndkd.config.from_dict``);
    ``sections`` adds keys to its sections (e.g. ``{"train": {"clip_grad_norm": 10}}``)."""
    epochs = settings.student_epochs if teacher else settings.teacher_epochs
    raw: dict[str, Any] = {
        "task": task,
        "seed": seed,
        "device": settings.device,
        "output_dir": str(output_dir),
        "data": {"name": dataset},
        "teacher": {"arch": teacher[0], "checkpoint": str(teacher[1])} if teacher else {},
        "student": {"arch": arch},
        "centers": {"path": str(centers)} if centers else {},
        "train": {
            "epochs": epochs,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "schedule": "cosine",
            "milestones": [],
        },
        "terms": terms,
    }
    for name, values in (sections or {}).items():
        raw[name] = {**raw[name], **values}
    return from_dict(raw)


def last_value(history: History, key: str) -> float:
    """``key`` of the last record of ``history`` that holds it (the last evaluation)."""
    return float(next(record[key] for record in reversed(history) if key in record))


def seed_summary(
    settings: DemoSettings,
    dataset: str,
    methods: Mapping[str, list[dict[str, Any]]],
    teacher: History,
    students: Mapping[str, Sequence[History]],
    keys: Sequence[str],
    wall_time_s: float,
) -> dict[str, Any]:
    """What a demo's ``results.json`` holds: the last evaluation's ``keys`` of the teacher
    and per method their mean and std over seeds (:func:`seed_numbers`), with its terms."""
    return {
        "dataset": dataset,
        "teacher": {"arch": settings.teacher, "epochs": settings.teacher_epochs}
        | seed_numbers([teacher], keys),
        "student": {"arch": settings.student, "epochs": settings.student_epochs},
        "seeds": list(settings.seeds),
        "methods": {
            name: {"terms": methods[name]} | seed_numbers(histories, keys)
            for name, histories in students.items()
        },
        "wall_time_s": round(wall_time_s, 1),
    }


def seed_numbers(histories: Sequence[History], keys: Sequence[str]) -> dict[str, Any]:
    """Per key its last value's mean and sample std (``<key>_std``) over the runs; and
    ``per_seed``: each run's last value of ``keys[0]``."""
    numbers: dict[str, Any] = {}
    for key in keys:
        numbers[key], numbers[f"{key}_std"] = mean_std([last_value(h, key) for h in histories])
    numbers["per_seed"] = [last_value(h, keys[0]) for h in histories]
    return numbers


def seed_table(
    settings: DemoSettings,
    labels: Mapping[str, str],
    summary: Mapping[str, Any],
    keys: Sequence[str],
    headers: Sequence[str],
) -> str:
    """The Markdown table of a :func:`seed_summary`: teacher first, then the students;
    ``mean ± std`` over seeds of each key."""

    def row(label: str, numbers: Mapping[str, Any]) -> list[str]:
        values = [format_mean_std(numbers[k], numbers[f"{k}_std"]) for k in keys]
        return [label, str(len(numbers["per_seed"])), *values]

    rows = [row(f"teacher {settings.teacher}", summary["teacher"])]
    rows += [
        row(f"student {settings.student} {labels[name]}", numbers)
        for name, numbers in summary["methods"].items()
    ]
    return markdown_table(headers, rows)


def _evaluate(config: RunConfig, seed: int, accuracy: float, centers: ClassMeans) -> ModelResult:
    """The run's test-set embeddings (from its ``last.pt``) and their statistics."""
    features, labels, _, _ = trained_student_embeddings(config, Path(config.output_dir) / LAST)
    stats = feature_stats(features, labels, centers.means)
    return ModelResult(seed, accuracy, stats, (features, labels))


def _check_embedding_dims(settings: DemoSettings) -> None:
    dims = {
        role: create_model(arch, 10, in_channels=1).embedding_dim
        for role, arch in (("teacher", settings.teacher), ("student", settings.student))
    }
    if dims["teacher"] != dims["student"]:
        raise ValueError(
            f"the demo compares student embeddings with the teacher's class means directly: "
            f"teacher {settings.teacher} ({dims['teacher']}-d) and student {settings.student} "
            f"({dims['student']}-d) need the same embedding dim"
        )
