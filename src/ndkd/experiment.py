"""Build a run from its config: device, data, models, class means, method; then train,
compute class means, or evaluate. Everything that can be refused is checked before anything
is written."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ndkd.centers import ClassMeans, class_means
from ndkd.config import RunConfig, dump_config
from ndkd.data import InMemoryLoader, build_dataset, cifar_transform
from ndkd.data.datasets import BUNDLED, ImageTensorDataset
from ndkd.engine import (
    LAST,
    DistInfo,
    LoopSettings,
    Progress,
    Trainer,
    evaluate_model,
    init_distributed,
    read_env,
)
from ndkd.engine.checkpoint import load_checkpoint as load_run_checkpoint
from ndkd.engine.distributed import SINGLE_PROCESS
from ndkd.methods import BuildContext, Distiller, FeatureSelector
from ndkd.models import create_model, load_checkpoint

log = logging.getLogger(__name__)

PROBE_BATCH = 2


class RunFolderError(ValueError):
    """The output folder holds another run (and ``--resume`` was not given)."""


@dataclass
class Experiment:
    """Everything a run needs, built and checked."""

    config: RunConfig
    device: torch.device
    dist: DistInfo
    student: nn.Module
    teacher: nn.Module | None
    method: Distiller
    train_loader: InMemoryLoader
    test_loader: InMemoryLoader
    train_size: int


def resolve_device(name: str, dist: DistInfo = SINGLE_PROCESS) -> torch.device:
    """``auto`` -> this process's GPU when available, else CPU; otherwise the named device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device


def _datasets(config: RunConfig) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    name = config.data.name
    if name in BUNDLED:
        return build_dataset(name, None, "train"), build_dataset(name, None, "test")
    root = Path(config.data.root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root {str(root)!r} does not exist; expected a folder "
            f"holding the {name} python-pickle files"
        )
    return (
        build_dataset(name, root, "train", cifar_transform(name, train=True)),
        build_dataset(name, root, "test", cifar_transform(name, train=False)),
    )


def _shard(dataset: ImageTensorDataset, dist: DistInfo) -> ImageTensorDataset:
    """This process's share of an evaluation set: every sample exactly once over processes."""
    if not dist.enabled:
        return dataset
    part = slice(dist.rank, None, dist.world_size)
    return ImageTensorDataset(
        dataset.images[part], dataset.labels[part], dataset.num_classes, dataset.transform
    )


def _centers_loader(config: RunConfig, train_set: ImageTensorDataset) -> InMemoryLoader:
    """One pass over this process's share of the training set for class means, with or
    without the training augmentation (``centers.transform``)."""
    dist = read_env()
    dataset = _shard(train_set, dist)
    if config.centers.transform == "test" and train_set.transform is not None:
        eval_transform = cifar_transform(config.data.name, train=False)
        dataset = ImageTensorDataset(
            dataset.images, dataset.labels, dataset.num_classes, eval_transform
        )
    device = resolve_device(config.device, dist) if config.data.resident else None
    return InMemoryLoader(dataset, config.train.batch_size, seed=config.seed, device=device)


def _model(
    arch: str, num_classes: int, in_channels: int, checkpoint: str | None, role: str
) -> nn.Module:
    model = create_model(arch, num_classes, in_channels=in_channels)
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{role}.checkpoint {checkpoint!r} not found")
        try:
            load_checkpoint(model, path)
        except ValueError as error:
            raise ValueError(
                f"{role}.checkpoint {checkpoint!r} does not fit {role}.arch={arch!r}: {error}"
            ) from error
    return model


def build(config: RunConfig, *, join_process_group: bool = True) -> Experiment:
    """Build and check everything ``config`` describes (the ``--dry-run``)."""
    dist = read_env()
    device = resolve_device(config.device, dist)
    if join_process_group:
        init_distributed(device)
    torch.manual_seed(config.seed)
    train_set, test_set = _datasets(config)
    num_classes = train_set.num_classes
    in_channels = train_set.images.shape[1]
    train_cfg = config.train
    if train_cfg.batch_size % dist.world_size:
        raise ValueError(
            f"train.batch_size={train_cfg.batch_size} must divide evenly over "
            f"{dist.world_size} processes"
        )
    per_rank = train_cfg.batch_size // dist.world_size
    resident = device if config.data.resident else None
    train_loader = InMemoryLoader(
        train_set,
        per_rank,
        shuffle=True,
        drop_last=False,
        device=resident,
        seed=config.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    test_loader = InMemoryLoader(_shard(test_set, dist), per_rank, device=resident)

    student = _model(
        config.student.arch, num_classes, in_channels, config.student.checkpoint, "student"
    ).to(device)
    teacher = None
    if config.teacher.arch:
        teacher = (
            _model(
                config.teacher.arch, num_classes, in_channels, config.teacher.checkpoint, "teacher"
            )
            .to(device)
            .eval()
        )
    centers = None
    if config.centers.path and Path(config.centers.path).exists():
        centers = ClassMeans.load(config.centers.path, num_classes=num_classes)
    probe_images = train_set.images[:PROBE_BATCH].to(device)
    if train_set.transform is not None:
        probe_images = train_set.transform(probe_images)
    with torch.no_grad():
        student_probe = student.eval()(probe_images)
        teacher_probe = teacher(probe_images) if teacher is not None else None

    def teacher_class_means(select: FeatureSelector) -> ClassMeans:
        loader = _centers_loader(config, train_set)
        return class_means(teacher, loader, num_classes, device, feature=select)

    context = BuildContext(
        num_classes,
        student_probe,
        teacher_probe,
        centers,
        len(train_set),
        student=student,
        teacher=teacher,
        teacher_class_means=teacher_class_means if teacher is not None else None,
        probe_images=probe_images,
    )
    if any(term.name == "nd" for term in config.terms) and centers is None:
        raise FileNotFoundError(
            f"centers.path {config.centers.path!r} not found; compute the teacher class "
            "means first: ndkd centers -c CONFIG"
        )
    method = Distiller(config.terms, context).to(device)
    if method.requires_teacher and teacher is None:
        raise ValueError("the loss terms need a teacher: set teacher.arch (and teacher.checkpoint)")
    train_loader.return_indices = method.requires_indices
    return Experiment(
        config, device, dist, student, teacher, method, train_loader, test_loader, len(train_set)
    )


def check_run_folder(config: RunConfig, resume: bool) -> Path:
    """Refuse to start over another run; require one to resume."""
    run_dir = Path(config.output_dir)
    existing = [
        name for name in ("config.yaml", LAST, "metrics.jsonl") if (run_dir / name).exists()
    ]
    if resume and not (run_dir / LAST).exists():
        raise RunFolderError(f"--resume: no checkpoint {run_dir / LAST} to resume from")
    if existing and not resume:
        raise RunFolderError(
            f"output_dir {str(run_dir)!r} already holds a run "
            f"({', '.join(existing)}); pass --resume to continue it, or "
            "choose another output_dir"
        )
    return run_dir


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    progress: Callable[[Progress], None] | None = None,
    step_progress: bool = True,
) -> list[dict[str, Any]]:
    """Train as ``config`` says, writing ``config.output_dir``; returns the metrics history.

    ``progress`` receives epoch records, and with ``step_progress`` also a report every 20
    steps (each one host-device sync; without it an epoch runs with no sync at all)."""
    run_dir = check_run_folder(config, resume)
    experiment = build(config)
    train_cfg = config.train
    settings = LoopSettings(
        epochs=train_cfg.epochs,
        lr=train_cfg.lr,
        momentum=train_cfg.momentum,
        nesterov=train_cfg.nesterov,
        weight_decay=train_cfg.weight_decay,
        schedule=train_cfg.schedule,
        milestones=list(train_cfg.milestones),
        gamma=train_cfg.gamma,
        lr_warmup_epochs=train_cfg.lr_warmup_epochs,
        amp=train_cfg.amp,
        channels_last=train_cfg.channels_last,
        compile=train_cfg.compile,
        eval_every=train_cfg.eval_every,
        log_every=20 if step_progress else 0,
    )
    torch.manual_seed(config.seed + experiment.dist.rank)  # dropout etc. differ per process
    trainer = Trainer(
        student=experiment.student,
        teacher=experiment.teacher,
        method=experiment.method,
        train_loader=experiment.train_loader,
        test_loader=experiment.test_loader,
        settings=settings,
        run_dir=run_dir,
        device=experiment.device,
        dist_info=experiment.dist,
        config=config.to_dict(),
        progress=progress,
    )
    if experiment.dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            (run_dir / "config.yaml").write_text(dump_config(config))
    if resume:
        trainer.resume()
    return trainer.fit()


def compute_centers(
    config: RunConfig, progress: Callable[[int, int | None], None] | None = None
) -> Path:
    """Teacher class means over the training set, written to ``centers.path``."""
    if not config.centers.path:
        raise ValueError("centers.path: required, the file to write the class means to")
    if not config.teacher.arch or not config.teacher.checkpoint:
        raise ValueError("teacher.arch and teacher.checkpoint are required to compute class means")
    dist = read_env()
    device = resolve_device(config.device, dist)
    init_distributed(device)
    train_set, _ = _datasets(config)
    teacher = _model(
        config.teacher.arch,
        train_set.num_classes,
        train_set.images.shape[1],
        config.teacher.checkpoint,
        "teacher",
    ).to(device)
    loader = _centers_loader(config, train_set)
    means = class_means(
        teacher,
        loader,
        train_set.num_classes,
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


def evaluate(config: RunConfig, checkpoint: str | None = None) -> dict[str, float]:
    """Top-1/top-5 of the student weights in ``checkpoint`` (default: the run's last.pt)."""
    experiment = build(config)
    path = Path(checkpoint) if checkpoint else Path(config.output_dir) / LAST
    load_checkpoint(experiment.student, load_run_checkpoint(path))
    return evaluate_model(experiment.student, experiment.test_loader, experiment.device)
