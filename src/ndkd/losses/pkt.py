"""Probabilistic knowledge transfer, PKT (Passalis & Tefas, ECCV 2018)."""

from __future__ import annotations

import torch

from ndkd.checks import check_positive, check_same_batch, promote

PKT_EPS = 1e-7


def pkt_loss(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, eps: float = PKT_EPS
) -> torch.Tensor:
    """PKT loss with the paper's cosine-similarity kernel (Sec. 3 of the paper).

    For each side, ``K_ij = (1 + cos(x_i, x_j)) / 2`` over the batch (self-pairs included),
    the conditional probabilities ``p_{j|i} = K_ij / sum_k K_ik``, and the loss is
    ``1/B^2 sum_ij p^t_{j|i} log((p^t_{j|i} + eps) / (p^s_{j|i} + eps))``, i.e. the mean
    over rows ``i`` of KL(teacher || student), divided once more by B, as the authors' code
    (and RepDistiller) compute it; features are normalised with ``x / (||x|| + eps)``,
    ``eps = 1e-7`` as there. Student and teacher dims may differ; the
    teacher features are constants.
    """
    check_positive("eps", eps)
    check_same_batch("student_emb", student_emb, "teacher_emb", teacher_emb)
    s = promote(student_emb)
    t = promote(teacher_emb.detach()).to(s.dtype)
    with torch.autocast(s.device.type, enabled=False):
        p_s = _conditional_probabilities(s, eps)
        p_t = _conditional_probabilities(t, eps)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _conditional_probabilities(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-normalised cosine kernel ``p_{j|i}``, ``[B, B]``."""
    unit = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.t() + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)
