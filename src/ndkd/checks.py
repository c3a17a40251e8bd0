"""Input validation and dtype promotion shared by the losses, the loss terms and the
class-mean code.

Checks here never synchronize with an accelerator: shape checks read metadata only, and the
label-range check runs only for labels that live on the CPU and outside torch.compile (else an
out-of-range label still fails, through the device-side index assertion of ``gather``).
Parameter checks (:func:`check_positive` and its siblings) take the name to show, e.g.
``"dkd: temperature"``, and refuse NaN and infinities, which pass a plain ``value <= 0`` test.
"""

from __future__ import annotations

import math
from numbers import Real

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
    check_positive("temperature", temperature)
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


def check_finite(name: str, value: float) -> None:
    """Require a finite real number (not a bool)."""
    if not _finite_real(value):
        raise ValueError(f"{name} must be a finite number, found {value!r}")


def check_positive(name: str, value: float) -> None:
    """Require a finite real number ``> 0``."""
    if not _finite_real(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, found {value!r}")


def check_non_negative(name: str, value: float) -> None:
    """Require a finite real number ``>= 0``."""
    if not _finite_real(value) or value < 0:
        raise ValueError(f"{name} must be non-negative and finite, found {value!r}")


def check_fraction(name: str, value: float) -> None:
    """Require a real number in ``[0, 1)`` (a dropout or momentum, a label smoothing)."""
    if not _finite_real(value) or not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), found {value!r}")


def check_count(name: str, value: int, minimum: int = 1) -> None:
    """Require an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, found {value!r}")


def check_flag(name: str, value: object) -> None:
    """Require a boolean option (``true``/``false`` in a config), not a number or a string."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, found {value!r}")


def _finite_real(value: object) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
