"""Feature norm and direction of trained runs on the test split: each run's student (the
weights of its ``last.pt``) and its teacher, with the cosine of every embedding to the teacher
class mean of its label (the config's ``centers.path``).

Models and data are rebuilt from the run's ``config.yaml`` by the experiment layer's
builders (student, teacher and data only: no method, no class-means pass), so a run is
rebuilt exactly as it trained. The cosine is absent for a model whose embedding dim
differs from the class means' dim (e.g. a student distilled through a projector) and for
runs without a class-means file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ndkd import experiment
from ndkd.analysis.features import FeatureStats, collect_embeddings, feature_stats
from ndkd.analysis.runs import Run, RunReadError
from ndkd.centers import ClassMeans
from ndkd.config import RunConfig
from ndkd.engine import LAST
from ndkd.experiment.data import RunData
from ndkd.experiment.models import build_teacher

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class TeacherFeatures:
    """A teacher's test-set statistics; runs with the same teacher and data share one (the
    same object, so it can key a dict)."""

    arch: str
    checkpoint: str | None
    dataset: str
    stats: FeatureStats


@dataclass(frozen=True)
class RunFeatures:
    """A run's student statistics and its teacher's (``None`` for a run without teacher)."""

    run: Run
    student: FeatureStats
    teacher: TeacherFeatures | None


def collect_run_features(
    runs: Sequence[Run],
    device: str = "auto",
    data_root: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> list[RunFeatures]:
    """:func:`run_features` of every run, each teacher evaluated once; ``announce`` receives
    one line per run before its work starts."""
    teachers: dict[tuple, TeacherFeatures] = {}
    results = []
    for index, run in enumerate(runs, start=1):
        if announce is not None:
            announce(f"[{index}/{len(runs)}] features of {run.path}")
        results.append(run_features(run, device, data_root, teachers))
    return results


def run_features(
    run: Run,
    device: str = "auto",
    data_root: str | None = None,
    teachers: dict[tuple, TeacherFeatures] | None = None,
) -> RunFeatures:
    """Test-set embedding statistics of ``run``'s student and teacher.

    ``device`` and ``data_root`` replace the config's (the run may have trained elsewhere);
    ``teachers`` caches teacher statistics across calls.

    Raises:
        RunReadError: the run folder has no ``last.pt``.
    """
    checkpoint = run.path / LAST
    if not checkpoint.is_file():
        raise RunReadError(
            f"{checkpoint}: missing; --features needs the run's last checkpoint "
            "(ndkd train writes it)"
        )
    config = _local_config(run.config, device, data_root)
    features, labels, data, device = trained_student_embeddings(config, checkpoint)
    means = _class_means(config)
    student = feature_stats(features, labels, means)
    if student.cosines is None and means is not None:
        log.info(
            "%s: student embedding dim %d differs from the class means' dim %d: no cosine",
            run.path,
            features.shape[1],
            means.shape[1],
        )
    teacher = None
    if config.teacher.arch:
        key = (
            config.teacher.arch,
            config.teacher.checkpoint,
            config.data.name,
            config.data.root,
            config.centers.path,
        )
        cache = {} if teachers is None else teachers
        if key not in cache:
            model = build_teacher(config.teacher, data.num_classes, data.in_channels, device)
            embeddings = collect_embeddings(model, data.test_loader, device)
            cache[key] = TeacherFeatures(
                config.teacher.arch,
                config.teacher.checkpoint,
                config.data.name,
                feature_stats(*embeddings, means),
            )
        teacher = cache[key]
    return RunFeatures(run, student, teacher)


def trained_student_embeddings(
    config: RunConfig, checkpoint: str | os.PathLike[str]
) -> tuple[torch.Tensor, torch.Tensor, RunData, torch.device]:
    """Test-set embeddings and labels of ``config``'s student with the weights of
    ``checkpoint`` (a run's ``last.pt``), with the run's data and device."""
    student, data, device, _ = experiment.trained_student(
        config, checkpoint, join_process_group=False
    )
    features, labels = collect_embeddings(student, data.test_loader, device)
    return features, labels, data, device


def _local_config(config: RunConfig, device: str, data_root: str | None) -> RunConfig:
    data = config.data if data_root is None else dataclasses.replace(config.data, root=data_root)
    return dataclasses.replace(config, device=device, data=data)


def _class_means(config: RunConfig) -> torch.Tensor | None:
    path = config.centers.path
    if not path or not Path(path).exists():
        log.info("no class-means file (centers.path %r): cosines are absent", path)
        return None
    return ClassMeans.load(path).means
