"""A run's loss composition, sized from probes of the built models."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ndkd.centers import ClassMeans
from ndkd.collective import all_gather_rows
from ndkd.config import RunConfig
from ndkd.engine.distributed import DistInfo
from ndkd.experiment.data import RunData, centers_loader
from ndkd.methods import BuildContext, Distiller, FeatureSelector
from ndkd.methods.base import MAIN_VIEW
from ndkd.tasks import Task


def load_centers(config: RunConfig, num_classes: int) -> ClassMeans | None:
    """The class means of ``centers.path`` when that file exists."""
    path = config.centers.path
    if path and Path(path).exists():
        return ClassMeans.load(path, num_classes=num_classes)
    return None


def build_method(
    config: RunConfig,
    task: Task,
    data: RunData,
    student: nn.Module,
    teacher: nn.Module | None,
    device: torch.device,
    dist: DistInfo,
) -> Distiller:
    """The terms of ``config.terms`` with their modules, on ``device``.

    Adapters are sized from the outputs of the student and teacher on a probe batch. The
    class means of ``centers.path`` are read when that file exists; a term that needs them
    refuses to build without them (so ``requires_centers`` is the built method's answer,
    never a term's name: ``nd`` with ``centers: classifier_weights`` reads no file).
    """
    raw = data.probe_batch(device)
    student_probe, teacher_probe = task.probe_rows(
        student, teacher, task.to_device(raw, device, None)
    )

    def teacher_class_means(select: FeatureSelector) -> ClassMeans:
        loader = centers_loader(config, data.splits, dist, device)
        return task.class_means(teacher, loader, data.num_classes, device, feature=select)

    @torch.no_grad()
    def teacher_features(select: FeatureSelector) -> torch.Tensor:
        rows = [select(teacher_probe)[:0]]  # a process may hold no sample
        for raw in centers_loader(config, data.splits, dist, device):
            rows.append(select(task.feature_rows(teacher, task.to_device(raw, device, None))))
        return all_gather_rows(torch.cat(rows).float()).cpu()

    centers = load_centers(config, data.num_classes)
    context = BuildContext(
        data.num_classes,
        student_probe,
        teacher_probe,
        centers,
        data.train_size,
        student=student,
        teacher=teacher,
        teacher_class_means=teacher_class_means if teacher is not None else None,
        probe_images=raw[0] if isinstance(raw[0], torch.Tensor) else None,
        centers_path=config.centers.path,
        multi_label=config.task == "multilabel",
        teacher_features=teacher_features if teacher is not None else None,
        views=tuple(getattr(task, "views", (MAIN_VIEW,))),
    )
    method = Distiller(config.terms, context).to(device)
    if method.requires_teacher and teacher is None:
        raise ValueError("the loss terms need a teacher: set teacher.arch (and teacher.checkpoint)")
    return method
