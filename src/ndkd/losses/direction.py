"""Feature-direction baselines of the paper (Sec. 3.2): cosine and InfoNCE to class means."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ndkd.checks import check_feature_dim, check_labels, check_matrix, check_positive, promote
from ndkd.losses.nd import EPS
from ndkd.losses.reduction import Reduction, reduce_per_sample


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm (a zero row stays zero)."""
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(EPS)


def _cosine_to_centers(
    student_emb: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate, promote, and return (unit student rows, unit centers, labels on device)."""
    check_matrix("student_emb", student_emb)
    check_feature_dim("student_emb", student_emb, centers)
    check_labels(labels, student_emb.shape[0], centers.shape[0])
    s = promote(student_emb)
    c = promote(centers.detach()).to(device=s.device, dtype=s.dtype)
    return unit_rows(s), unit_rows(c), labels.to(s.device).long()


def cosine_direction_loss(
    student_emb: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """Cosine direction loss, Eq. 1: ``l_i = 1 - cos(s_i, c_{y_i})``.

    Eq. 1 is written class-balanced (``reduction="class"``); ``"batch"`` (default, as every
    ndkd loss) is the plain mean over the batch, ``"none"`` the ``[B]`` per-sample values.
    The class means are constants. A zero student feature has cosine 0 (loss 1).
    """
    s, c, labels = _cosine_to_centers(student_emb, labels, centers)
    per_sample = 1.0 - (s * c.index_select(0, labels)).sum(dim=1)
    return reduce_per_sample(per_sample, labels, c.shape[0], reduction)


def infonce_direction_loss(
    student_emb: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    temperature: float = 1.0,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """InfoNCE direction loss over class means, Eq. 2.

    ``l_i = -log softmax_j(cos(s_i, c_j) / tau)[y_i]`` over all C class means; the paper uses
    ``tau = 1`` (the default). Reductions as in :func:`cosine_direction_loss`.
    """
    check_positive("temperature", temperature)
    s, c, labels = _cosine_to_centers(student_emb, labels, centers)
    logits = (s @ c.t()) / temperature
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    return reduce_per_sample(per_sample, labels, c.shape[0], reduction)
