"""Input validation and dtype promotion shared by the losses and the class-mean code.

Checks here never synchronize with an accelerator: shape checks read metadata only, and the
label-range check runs only for labels that live on the CPU and outside torch.compile (else an
out-of-range label still fails, through the device-side index assertion of ``gather``).
"""

from __future__ import annotations

import torch


def promote(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as a floating tensor of at least float32 precision (bf16/fp16 -> fp32)."""
    if not torch.is_floating_point(x):
        raise TypeError(f"expected a floating-point tensor, found dtype {x.dtype}")
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_matrix(name: str, x: torch.Tensor) -> None:
    """Require a 2-D ``[B, D]`` tensor."""
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, dim], found shape {tuple(x.shape)}")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Require two tensors of identical shape (e.g. student and teacher features)."""
    if a.shape != b.shape:
        hint = ""
        if a.dim() == 2 and b.dim() == 2 and a.shape[0] == b.shape[0]:
            hint = " (feature dims differ: project the student first, see ndkd.EmbeddingProjector)"
        raise ValueError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape"
            + hint
        )


def check_feature_dim(name: str, x: torch.Tensor, centers: torch.Tensor) -> None:
    """Require ``x`` ``[B, D]`` to match class means ``[C, D]`` in D."""
    check_matrix("centers", centers)
    if x.shape[1] != centers.shape[1]:
        raise ValueError(
            f"{name} has dim {x.shape[1]} but the class means have dim {centers.shape[1]}; "
            "project the student embedding to the teacher's dim (ndkd.EmbeddingProjector)"
        )


def check_labels(labels: torch.Tensor, batch: int, num_classes: int | None) -> None:
    """Require integer labels ``[B]`` in ``[0, num_classes)`` (range checked for CPU labels).

    ``num_classes=None`` checks only that labels are non-negative.
    """
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"labels must have shape [{batch}] to match the batch, found {tuple(labels.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"labels must be an integer tensor, found dtype {labels.dtype}")
    if labels.device.type == "cpu" and batch > 0 and not torch.compiler.is_compiling():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            expected = "non-negative" if num_classes is None else f"in [0, {num_classes - 1}]"
            raise ValueError(f"labels must be {expected}, found values in [{low}, {high}]")


def check_logit_pair(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> None:
    """Require a positive temperature and student/teacher logits of one ``[B, C]`` shape."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, found {temperature}")
    check_matrix("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)


def check_same_batch(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Require two ``[B, *]`` feature matrices over the same batch (their dims may differ)."""
    check_matrix(name_a, a)
    check_matrix(name_b, b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must hold the same batch, found {a.shape[0]} and "
            f"{b.shape[0]} rows"
        )


def check_feature_map(name: str, x: torch.Tensor) -> None:
    """Require a 4-D ``[B, C, H, W]`` feature map."""
    if x.dim() != 4:
        raise ValueError(f"{name} must be [B, C, H, W], found shape {tuple(x.shape)}")
