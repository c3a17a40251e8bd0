"""Train, compute class means, evaluate: each builds only what it needs from the config.
Everything that can be refused is checked before anything is written."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ndkd.centers.store import check_output_path
from ndkd.config import RunConfig
from ndkd.data.views import VIEWS
from ndkd.engine import LAST, DistInfo, Trainer, init_distributed, read_env
from ndkd.engine.checkpoint import load_checkpoint as load_run_checkpoint
from ndkd.engine.tensorboard import TensorBoardSink
from ndkd.experiment.data import RunData, build_data, centers_loader, train_loader_of
from ndkd.experiment.device import resolve_device
from ndkd.experiment.method import build_method
from ndkd.experiment.models import build_model, build_teacher, restrict_trainable
from ndkd.experiment.run_folder import OpenRun, RunPlan, plan_run
from ndkd.methods import Distiller
from ndkd.models import CheckpointMismatchError, load_checkpoint
from ndkd.progress import ProgressFn
from ndkd.tasks import BatchMixer, Task, build_task

DATASET = "dataset.json"


def batch_mixer(config: RunConfig, num_classes: int) -> BatchMixer | None:
    """Mixup / CutMix of training batches as ``data.mixup``/``data.cutmix`` say (None: off)."""
    data = config.data
    if not (data.mixup or data.cutmix):
        return None
    return BatchMixer(num_classes, data.mixup, data.cutmix, data.mixup_prob, data.mixup_switch_prob)


def run_task(config: RunConfig, splits: Any, training: bool = True) -> Task:
    """The task of ``config.task`` for ``splits`` (``training``: with the batch mixing of
    the config; evaluation never mixes; with ``data.strong_view`` a classification task's
    training batches hold two views)."""
    if config.task == "multilabel":
        return build_task(
            "multilabel", classes=list(splits.classes), ap_definition=splits.ap_definition
        )
    if config.task == "detection":
        data = config.data
        return build_task(
            "detection",
            classes=list(splits.classes),
            ground_truth=splits.ground_truth(),
            category_ids=list(splits.category_ids),
            train_sizes=list(data.train_sizes),
            test_size=data.test_size,
            max_size=data.max_size,
            metric=splits.metric,
        )
    mixer = batch_mixer(config, splits.num_classes) if training else None
    return build_task(
        config.task, mixer=mixer, views=VIEWS if config.data.strong_view else VIEWS[:1]
    )


@dataclass
class Experiment:
    """Everything a training run needs, built and checked."""

    config: RunConfig
    device: torch.device
    dist: DistInfo
    task: Task
    data: RunData
    student: nn.Module
    teacher: nn.Module | None
    method: Distiller


def _setup(config: RunConfig, join_process_group: bool) -> tuple[DistInfo, torch.device]:
    dist = read_env()
    device = resolve_device(config.device, dist)
    if join_process_group:
        init_distributed(device)
    torch.manual_seed(config.seed)
    return dist, device


def build(config: RunConfig, *, join_process_group: bool = True) -> Experiment:
    """Build and check everything a training run of ``config`` needs (the ``--dry-run``)."""
    dist, device = _setup(config, join_process_group)
    data = build_data(config, dist, device)
    task = run_task(config, data.splits)
    student = build_model(config.student, "student", data.num_classes, data.in_channels, device)
    restrict_trainable(student, config.train.trainable)
    teacher = build_teacher(config.teacher, data.num_classes, data.in_channels, device)
    method = build_method(config, task, data, student, teacher, device, dist)
    if method.requires_indices:
        data.train_loader = train_loader_of(config, data, dist, device, indices=True)
    return Experiment(config, device, dist, task, data, student, teacher, method)


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    progress: ProgressFn | None = None,
    step_progress: bool = True,
) -> list[dict[str, Any]]:
    """Train as ``config`` says, writing ``config.output_dir``; returns the metrics history.

    The folder is checked first (:mod:`ndkd.experiment.run_folder`), then everything is
    built, then the main process locks the folder and writes. ``progress`` receives a report
    at each epoch end, and with ``step_progress`` also every ``log.progress_every`` steps
    (each one host-device sync; without it an epoch runs with no sync at all)."""
    plan = plan_run(config, resume)
    built = build(config)
    torch.manual_seed(config.seed + built.dist.rank)  # dropout etc. differ per process
    run_dir = plan.run_dir
    sinks = []
    with OpenRun(plan, config) if built.dist.is_main else nullcontext() as folder:
        if folder is not None:
            folder.write_config()
            folder.write_json(DATASET, built.data.splits.describe(config.data.name))
            if config.log.tensorboard:
                sinks.append(TensorBoardSink(run_dir / "tensorboard", purge_step=_first(plan)))
        trainer = Trainer(
            task=built.task,
            student=built.student,
            teacher=built.teacher,
            method=built.method,
            train_loader=built.data.train_loader,
            test_loader=built.data.test_loader,
            settings=config.train,
            run_dir=run_dir,
            device=built.device,
            dist_info=built.dist,
            config=config.to_dict(),
            progress=progress,
            progress_every=config.log.progress_every if step_progress else 0,
            sync_every=config.log.progress_every,
            sinks=sinks,
            teacher_batch_stats=config.teacher.bn == "train",
        )
        if plan.checkpoint is not None:
            trainer.resume(plan.checkpoint)
        try:
            return trainer.fit()
        finally:
            for sink in sinks:
                sink.close()


def _first(plan: RunPlan) -> int:
    """The first epoch number this session writes (TensorBoard replaces later ones)."""
    return 1 + (int(plan.checkpoint["epoch"]) if plan.checkpoint is not None else 0)


def compute_centers(config: RunConfig, progress: ProgressFn | None = None) -> Path:
    """Teacher class means over the training set, written to ``centers.path``."""
    if not config.centers.path:
        raise ValueError("centers.path: required, the file to write the class means to")
    if not config.teacher.arch or not config.teacher.checkpoint:
        raise ValueError("teacher.arch and teacher.checkpoint are required to compute class means")
    check_output_path(config.centers.path)
    dist, device = _setup(config, join_process_group=True)
    data = build_data(config, dist, device)
    task = run_task(config, data.splits, training=False)
    teacher = build_teacher(config.teacher, data.num_classes, data.in_channels, device)
    means = task.class_means(
        teacher,
        centers_loader(config, data.splits, dist, device),
        data.num_classes,
        device,
        metadata={
            "teacher": config.teacher.arch,
            "checkpoint": str(config.teacher.checkpoint),
            "dataset": config.data.name,
            "split": "train",
            "transform": config.centers.transform,
        },
        progress=progress,
    )
    path = Path(config.centers.path)
    if dist.is_main:
        means.save(path)
    return path


def trained_student(
    config: RunConfig, checkpoint: str | Path | None = None, *, join_process_group: bool = True
) -> tuple[nn.Module, RunData, torch.device, Task]:
    """The student with the weights of ``checkpoint`` (default: the run's ``last.pt``), the
    run's data, device and task: no teacher, no class means, no method."""
    dist, device = _setup(config, join_process_group)
    data = build_data(config, dist, device)
    task = run_task(config, data.splits, training=False)
    student = build_model(config.student, "student", data.num_classes, data.in_channels, device)
    path = Path(checkpoint) if checkpoint else Path(config.output_dir) / LAST
    try:
        load_checkpoint(student, load_run_checkpoint(path))
    except CheckpointMismatchError as error:
        raise ValueError(
            f"{path} does not hold weights of student.arch={config.student.arch!r}: {error}"
        ) from error
    return student, data, device, task


def evaluate(config: RunConfig, checkpoint: str | Path | None = None) -> dict[str, float]:
    """The task's metrics of the student weights in ``checkpoint`` (default: last.pt)."""
    student, data, device, task = trained_student(config, checkpoint)
    return task.evaluate(student, data.test_loader, device, nullcontext)
