"""Decoupled knowledge distillation, DKD (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ndkd.checks import check_labels, check_non_negative
from ndkd.losses.kd import logit_pair_at, squared
from ndkd.losses.reduction import Reduction, reduce_per_sample


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float | torch.Tensor,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """DKD loss, ``alpha * TCKD + beta * NCKD``, each times ``T^2`` (the DKD objective, Sec. 3).

    With ``p = softmax(z / T)`` and ``y`` the label of a sample:

    - TCKD: ``KL(b^t || b^s)`` of the binary distributions
      ``b = (p_y, 1 - p_y)`` (target vs. all non-target classes);
    - NCKD: ``KL(p~^t || p~^s)`` of the distributions over the ``C - 1`` non-target classes,
      ``p~_j = p_j / (1 - p_y)`` for ``j != y`` (zero when ``C = 2``).

    Everything is computed in log-space from the logits: the non-target logits are gathered
    into a ``[B, C-1]`` matrix (``log p~`` is their ``log_softmax``) and the binary
    log-probabilities come from ``logsumexp``, so saturated logits stay finite. The teacher
    logits are constants. ``reduction``: ``"batch"`` (mean, as the public code), ``"class"``
    (class-balanced) or ``"none"`` (``[B]``). ``temperature`` may be a tensor, as in
    :func:`ndkd.losses.kd.kd_loss` (CTKD's learned temperature).
    """
    check_non_negative("alpha", alpha)
    check_non_negative("beta", beta)
    s, t, tau = logit_pair_at(student_logits, teacher_logits, temperature)
    batch, num_classes = student_logits.shape
    if num_classes < 2:
        raise ValueError(f"dkd_loss needs at least 2 classes, found {num_classes}")
    check_labels(labels, batch, num_classes)
    labels = labels.to(student_logits.device).long()
    s, t = s / tau, t / tau
    others = non_target_index(labels, num_classes)
    s_target, s_others = split_target(s, labels, others)
    t_target, t_others = split_target(t, labels, others)

    tckd = _kl_from_logs(
        _binary_log_probs(t_target, t_others), _binary_log_probs(s_target, s_others)
    )
    nckd = _kl_from_logs(F.log_softmax(t_others, dim=1), F.log_softmax(s_others, dim=1))
    per_sample = (alpha * tckd + beta * nckd) * squared(tau)
    return reduce_per_sample(per_sample, labels, num_classes, reduction)


def non_target_index(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[B, C-1]`` class indices other than each label, in increasing order."""
    ranks = torch.arange(num_classes - 1, device=labels.device).expand(labels.shape[0], -1)
    return ranks + (ranks >= labels.unsqueeze(1)).long()


def split_target(
    logits: torch.Tensor, labels: torch.Tensor, others: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target logit ``[B]`` and the non-target logits ``[B, C-1]``."""
    target = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    return target, logits.gather(1, others)


def _binary_log_probs(target: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` log-probabilities of (target, non-target) under ``softmax`` of the logits."""
    log_others = torch.logsumexp(others, dim=1)
    log_total = torch.logaddexp(target, log_others)
    return torch.stack((target - log_total, log_others - log_total), dim=1)


def _kl_from_logs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row ``KL(p || q)`` from log-probabilities (finite when ``p`` underflows to 0)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)
