"""The ND loss (dino-loss): student features regularized by teacher class means."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ndkd.checks import (
    check_feature_dim,
    check_labels,
    check_matrix,
    check_same_batch,
    check_same_shape,
    promote,
)
from ndkd.losses.reduction import Reduction, reduce_per_sample

EPS = 1e-12
# A teacher row whose norm is at most this fraction of its class mean's norm is degenerate.
DEGENERATE_TEACHER = 1e-3


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

    Degenerate rows. Eq. 5 divides by the teacher's norm, so it is undefined for a teacher
    feature of zero norm; the max of Eq. 7 hides that only while ``s_i`` is not zero too
    (at ``s_i = t_i = 0`` it is 0/0, and the gradient grows as
    ``1 / max(||s_i||, ||t_i||)`` towards it). A teacher row with
    ``||t_i|| <= 1e-3 ||c_y||`` (:data:`DEGENERATE_TEACHER`) is therefore taken as carrying
    no norm, and its class mean, the teacher's average feature of the class, gives it:
    ``||c_y||`` replaces ``||t_i||``. Every other row follows the formula exactly. Hence the
    gradient of ``l_i`` w.r.t. ``s_i`` has norm at most ``1 / max(||s_i||, ||t_i||)`` (the
    teacher norm so chosen), at most ``1000 / ||c_y||``, for every row; at
    ``s_i = t_i = 0`` it is ``-c_y / ||c_y||^2`` (Eq. 5 with the class mean as the target).
    A zero class mean has no direction: ``e = 0``, so its rows have loss 1 and zero gradient.

    Mixed images (mixup / CutMix, as the public DeiT++ code): ``labels`` may instead be the
    ``[B, C]`` mixing weights of each image (``lam`` on its own class, ``1 - lam`` on the
    class of the image mixed in); the target of row ``i`` is then the class means mixed by
    the same weights, ``c_i = sum_k w_ik c_k``, and ``e = c_i / ||c_i||``. The ``"class"``
    reduction then counts each row under its largest weight.

    Args:
        student_emb: ``[B, D]`` student penultimate features (already projected to the
            teacher's dim when the dims differ).
        teacher_emb: ``[B, D]`` teacher penultimate features; treated as constants.
        labels: ``[B]`` integer class labels, or ``[B, C]`` float mixing weights.
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
    mixed = labels.is_floating_point() and labels.dim() == 2
    if mixed:
        check_same_batch("labels (mixing weights)", labels, "student_emb", student_emb)
        if labels.shape[1] != centers.shape[0]:
            raise ValueError(
                f"mixing weights have {labels.shape[1]} classes but the class means "
                f"{centers.shape[0]}"
            )
    else:
        check_labels(labels, student_emb.shape[0], centers.shape[0])

    s = promote(student_emb)
    t = promote(teacher_emb.detach()).to(s.dtype)
    c = promote(centers.detach()).to(device=s.device, dtype=s.dtype)
    if mixed:
        weights = labels.detach().to(device=s.device, dtype=s.dtype)
        centers_y = weights @ c
        norms_y = torch.linalg.vector_norm(centers_y, dim=1)
        inv_norms_y = torch.where(norms_y > 0, norms_y.reciprocal(), 0.0)
        labels = weights.argmax(dim=1)
    else:
        labels = labels.to(s.device).long()
        center_norms = torch.linalg.vector_norm(c, dim=1)
        inv_center_norms = torch.where(center_norms > 0, center_norms.reciprocal(), 0.0)
        norms_y = center_norms.index_select(0, labels)
        centers_y = c.index_select(0, labels)
        inv_norms_y = inv_center_norms.index_select(0, labels)
    teacher_norms = torch.linalg.vector_norm(t, dim=1)
    teacher_norms = torch.where(
        teacher_norms > DEGENERATE_TEACHER * norms_y, teacher_norms, norms_y
    )
    per_sample = _per_sample(s, centers_y, inv_norms_y, teacher_norms)
    return reduce_per_sample(per_sample, labels, c.shape[0], reduction)


def _row_parts(
    s: torch.Tensor, centers_y: torch.Tensor, inv_norms_y: torch.Tensor, teacher_norms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the projection ``s . c_y / ||c_y||``, ``||s||`` and the denominator
    ``max(||s||, teacher_norms)`` (floored at ``EPS``, which only a zero class mean reaches)."""
    projection = (s * centers_y).sum(dim=1) * inv_norms_y
    student_norms = torch.linalg.vector_norm(s, dim=1)
    denom = torch.maximum(student_norms, teacher_norms).clamp_min(EPS)
    return projection, student_norms, denom


def _per_sample_autograd(
    s: torch.Tensor, centers_y: torch.Tensor, inv_norms_y: torch.Tensor, teacher_norms: torch.Tensor
) -> torch.Tensor:
    """The per-row loss ``1 - projection / denom`` through plain autograd: the reference that
    the fused :class:`_NDPerSample` is tested against."""
    projection, _, denom = _row_parts(s, centers_y, inv_norms_y, teacher_norms)
    return 1.0 - projection / denom


class _NDPerSample(torch.autograd.Function):
    """:func:`_per_sample_autograd` with its gradient written out in one ``[B, D]`` buffer,
    where autograd writes the product's and the norm's gradients apart and then sums them
    (``benchmarks/RESULTS.md``: forward + backward 1.15-2.1x faster on CPU, up to 3.5x
    where fresh buffers are page-faulted in).

    With ``d = max(||s||, teacher_norm)`` and ``p = s . c_y / ||c_y||``::

        dl/ds = -c_y / (||c_y|| d)                       if ||s|| < teacher_norm   (Eq. 5)
        dl/ds = -c_y / (||c_y|| d) + p s / ||s||^3       otherwise                 (Eq. 6)

    (at a tie ``||s|| = teacher_norm``, where autograd's ``maximum`` would average the two
    one-sided gradients, this takes Eq. 6's).
    """

    @staticmethod
    def forward(ctx, s, centers_y, inv_norms_y, teacher_norms):
        projection, student_norms, denom = _row_parts(s, centers_y, inv_norms_y, teacher_norms)
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


# The per-row step nd_loss uses (benchmarks/bench_nd_loss.py swaps it to compare the two).
_per_sample = _NDPerSample.apply
