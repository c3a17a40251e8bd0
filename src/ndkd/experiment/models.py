"""A run's student and teacher from their config sections."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ndkd.config import ModelConfig
from ndkd.models import CheckpointMismatchError, create_model, load_checkpoint


def build_model(
    spec: ModelConfig, role: str, num_classes: int, in_channels: int, device: torch.device
) -> nn.Module:
    """Model ``spec.arch`` with the weights of ``spec.checkpoint`` (if any), on ``device``.

    ``role`` (``"student"``/``"teacher"``) names the config section in error messages.
    """
    timm_only = {"drop_path": spec.drop_path, "grad_checkpointing": spec.grad_checkpointing}
    for key, value in timm_only.items():
        if value and not spec.arch.startswith("timm:"):
            raise ValueError(f"{role}.{key}: an option of timm: models, not of {spec.arch!r}")
    options = {"drop_path_rate": spec.drop_path} if spec.drop_path else {}
    model = create_model(
        spec.arch, num_classes, in_channels=in_channels, pretrained=spec.pretrained, **options
    )
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
    """The frozen teacher in eval mode, or ``None`` when ``teacher.arch`` is empty."""
    if not spec.arch:
        return None
    teacher = build_model(spec, "teacher", num_classes, in_channels, device)
    return teacher.eval().requires_grad_(False)
