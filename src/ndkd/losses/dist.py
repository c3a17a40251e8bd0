"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

import torch

from ndkd.checks import check_logit_pair, check_non_negative, promote


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float,
    gamma: float,
    temperature: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    """DIST loss, ``T^2 * (beta * L_inter + gamma * L_intra)`` (the DIST objective, Sec. 3).

    With ``P = softmax(Z / T)`` row-wise (``[B, C]``) and ``rho`` the Pearson correlation:

    - ``L_inter = 1/B sum_i (1 - rho(P^s_i,:, P^t_i,:))``, over the classes of each sample;
    - ``L_intra = 1/C sum_j (1 - rho(P^s_:,j, P^t_:,j))``, over the batch for each class.

    ``rho(a, b) = <a - mean(a), b - mean(b)> / (||a - mean(a)|| ||b - mean(b)|| + eps)``, the
    ``eps`` of the reference code, so a zero-variance row or column gives ``rho = 0`` rather
    than NaN. With a single sample (``B = 1``) the intra-class correlation is undefined and
    ``L_intra`` is taken as 0 (an empty batch gives 0 as well). ``L_intra`` couples the
    samples of the batch, so there is no per-sample reduction: the result is a scalar. The
    teacher logits are constants.
    """
    check_non_negative("beta", beta)
    check_non_negative("gamma", gamma)
    check_logit_pair(student_logits, teacher_logits, temperature)
    p_s = torch.softmax(promote(student_logits) / temperature, dim=1)
    t = promote(teacher_logits.detach()).to(p_s.dtype)
    p_t = torch.softmax(t / temperature, dim=1)
    batch = p_s.shape[0]
    inter = (1 - _pearson(p_s, p_t, dim=1, eps=eps)).sum() / max(batch, 1)
    if batch > 1:
        intra = (1 - _pearson(p_s, p_t, dim=0, eps=eps)).mean()
    else:
        intra = inter.new_zeros(())
    return temperature**2 * (beta * inter + gamma * intra)


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (``eps`` added to the denominator)."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    norms = torch.linalg.vector_norm(a, dim=dim) * torch.linalg.vector_norm(b, dim=dim)
    return (a * b).sum(dim=dim) / (norms + eps)
