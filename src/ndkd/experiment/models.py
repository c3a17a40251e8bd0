"""A run's student and teacher from their config sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ndkd.config import ModelConfig
from ndkd.models import CheckpointMismatchError, create_model, load_checkpoint


def build_model(
    spec: ModelConfig, role: str, num_classes: int, in_channels: int, device: torch.device
) -> nn.Module:
    """Model ``spec.arch`` with the weights of ``spec.checkpoint`` (if any), on ``device``.

    ``role`` (``"student"``/``"teacher"``) names the config section in error messages.

    Raises:
        ValueError: an option of ``timm:`` models (``drop_path``, ``grad_checkpointing``) or
            of ``torchvision:`` models (``pool``, ``embedding_dim``) for another source, or a
            checkpoint that does not fit.
        FileNotFoundError: ``spec.checkpoint`` does not exist.
    """
    source_only = {
        "timm:": {"drop_path": spec.drop_path, "grad_checkpointing": spec.grad_checkpointing},
        "torchvision:": {"pool": spec.pool, "embedding_dim": spec.embedding_dim},
    }
    for source, values in source_only.items():
        for key, value in values.items():
            if value and not spec.arch.startswith(source):
                raise ValueError(
                    f"{role}.{key}: an option of {source} models, not of {spec.arch!r}"
                )
    clash = sorted({"drop_path_rate", "pool", "embedding_dim", "num_classes"} & set(spec.options))
    if clash:
        raise ValueError(f"{role}.options.{clash[0]}: set by its own config key, not an option")
    options: dict[str, Any] = dict(spec.options)
    if spec.drop_path:
        options["drop_path_rate"] = spec.drop_path
    if spec.pool:
        options["pool"] = spec.pool
    if spec.embedding_dim:
        options["embedding_dim"] = spec.embedding_dim
    try:
        model = create_model(
            spec.arch, num_classes, in_channels=in_channels, pretrained=spec.pretrained, **options
        )
    except TypeError as error:  # a builder that does not take an option
        raise ValueError(f"{role}.options: {error}") from None
    if spec.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if spec.checkpoint:
        path = Path(spec.checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"{role}.checkpoint {spec.checkpoint!r} not found")
        try:
            load_checkpoint(model, path)
        except CheckpointMismatchError as error:
            raise ValueError(
                f"{role}.checkpoint {spec.checkpoint!r} does not fit {role}.arch="
                f"{spec.arch!r}: {error}"
            ) from error
    return model.to(device)


def build_teacher(
    spec: ModelConfig, num_classes: int, in_channels: int, device: torch.device
) -> nn.Module | None:
    """The frozen teacher in eval mode, or ``None`` when ``teacher.arch`` is empty.

    Every use of the teacher sees it in eval mode (class means, build-time passes of the
    terms, analysis); only the trainer's per-step forward switches its BatchNorms to
    batch statistics, when ``teacher.bn`` is ``train`` (see :class:`ndkd.engine.Trainer`'s
    ``teacher_batch_stats``)."""
    if not spec.arch:
        return None
    teacher = build_model(spec, "teacher", num_classes, in_channels, device)
    return teacher.eval().requires_grad_(False)


def restrict_trainable(student: nn.Module, trainable: str) -> None:
    """Freeze the parameters of ``student`` (the unwrapped model) that ``train.trainable``
    leaves out: ``"all"`` changes nothing; ``"embedding_projection"`` freezes all but the
    projection of ``student.embedding_dim`` (LSHFM's first stage). Modes are not touched, so
    batch-norm statistics still update in training mode.

    Raises:
        ValueError: an unknown ``trainable``, or ``"embedding_projection"`` for a student
            without a projection.
    """
    if trainable == "all":
        return
    if trainable != "embedding_projection":
        raise ValueError(
            f"train.trainable: unknown value {trainable!r}; expected all or embedding_projection"
        )
    finder = getattr(student, "embedding_projection", None)
    projection = finder() if callable(finder) else None
    if projection is None:
        raise ValueError(
            "train.trainable=embedding_projection: the student has no embedding projection "
            "(set student.embedding_dim on a torchvision: student)"
        )
    student.requires_grad_(False)
    projection.requires_grad_(True)
