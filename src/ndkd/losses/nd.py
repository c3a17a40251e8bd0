"""The ND loss (dino-loss): student features regularized by teacher class means."""

from __future__ import annotations

import torch

from ndkd.checks import (
    check_feature_dim,
    check_labels,
    check_matrix,
    check_same_shape,
    promote,
)
from ndkd.losses.reduction import Reduction, reduce_per_sample

EPS = 1e-12


def nd_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """ND loss of Eq. 5-7 (the dino-loss).

    Per sample, with ``e = c_y / ||c_y||`` the unit teacher class mean of the label::

        l_i = 1 - (s_i . e_{y_i}) / max(||s_i||, ||t_i||)

    Eq. 5 when the student norm is below the teacher's (pushes the norm up and the direction
    towards ``e``), Eq. 6 otherwise (direction only). Eq. 7 drops the constant 1, which
    changes no gradient; it is kept here as in the public code so the loss lies in [0, 2].

    Args:
        student_emb: ``[B, D]`` student penultimate features (already projected to the
            teacher's dim when the dims differ).
        teacher_emb: ``[B, D]`` teacher penultimate features; treated as constants.
        labels: ``[B]`` integer class labels.
        centers: ``[C, D]`` teacher class means; treated as constants.
        reduction: ``"batch"`` mean over the batch (the public code, default), ``"class"``
            class-balanced mean (Eq. 7), or ``"none"`` for the ``[B]`` per-sample losses.

    Returns:
        A scalar (or ``[B]``) in float32, or float64 when the inputs are float64. The loss
        weight is not applied here: the caller (the method composition) applies it.
    """
    check_matrix("student_emb", student_emb)
    check_same_shape("student_emb", student_emb, "teacher_emb", teacher_emb)
    check_feature_dim("student_emb", student_emb, centers)
    check_labels(labels, student_emb.shape[0], centers.shape[0])

    s = promote(student_emb)
    t = promote(teacher_emb.detach()).to(s.dtype)
    c = promote(centers.detach()).to(device=s.device, dtype=s.dtype)

    labels = labels.to(s.device).long()
    # s . e_y = (s . c_y) / ||c_y||: gather rows and norms, no [C, D] temporary.
    center_norms = torch.linalg.vector_norm(c, dim=1).clamp_min(EPS)
    projection = (s * c.index_select(0, labels)).sum(dim=1) / center_norms.index_select(0, labels)
    denom = torch.maximum(
        torch.linalg.vector_norm(s, dim=1), torch.linalg.vector_norm(t, dim=1)
    ).clamp_min(EPS)
    return reduce_per_sample(1.0 - projection / denom, labels, c.shape[0], reduction)
