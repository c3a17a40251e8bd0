"""The ND loss (dino-loss): student features regularized by teacher class means."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

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
    inv_center_norms = torch.linalg.vector_norm(c, dim=1).clamp_min(EPS).reciprocal()
    per_sample = _NDPerSample.apply(
        s,
        c.index_select(0, labels),
        inv_center_norms.index_select(0, labels),
        torch.linalg.vector_norm(t, dim=1),
    )
    return reduce_per_sample(per_sample, labels, c.shape[0], reduction)


class _NDPerSample(torch.autograd.Function):
    """Per-sample ND loss with its gradient written out (one fused pass each way).

    With ``d = max(||s||, ||t||)`` and ``p = s . c_y / ||c_y||``::

        dl/ds = -c_y / (||c_y|| d)                       if ||s|| < ||t||   (Eq. 5)
        dl/ds = -c_y / (||c_y|| d) + p s / ||s||^3       otherwise          (Eq. 6)

    Autograd through ``torch.maximum`` and the norm costs about twice the memory traffic;
    the tests check this gradient against ``gradcheck`` in float64.
    """

    @staticmethod
    def forward(ctx, s, centers_y, inv_norms_y, teacher_norms):
        projection = (s * centers_y).sum(dim=1) * inv_norms_y
        student_norms = torch.linalg.vector_norm(s, dim=1)
        denom = torch.maximum(student_norms, teacher_norms).clamp_min(EPS)
        ctx.save_for_backward(
            s, centers_y, inv_norms_y, projection, student_norms, denom, teacher_norms
        )
        return 1.0 - projection / denom

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        s, centers_y, inv_norms_y, projection, student_norms, denom, teacher_norms = (
            ctx.saved_tensors
        )
        coef_center = -grad * inv_norms_y / denom
        coef_student = torch.where(
            student_norms >= teacher_norms,
            grad * projection / (denom * student_norms.clamp_min(EPS).square()),
            0.0,
        )
        grad_s = centers_y * coef_center.unsqueeze(1)
        return grad_s.addcmul_(s, coef_student.unsqueeze(1)), None, None, None
