"""Normalized knowledge distillation, NKD (Yang et al., "From Knowledge Distillation to
Self-Knowledge Distillation: A Unified Approach with Normalized Loss and Customized Soft
Labels", ICCV 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ndkd.checks import check_labels, check_logit_pair, check_non_negative, promote
from ndkd.losses.dkd import non_target_index, split_target
from ndkd.losses.reduction import Reduction, reduce_per_sample


def nkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    gamma: float = 1.5,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """NKD loss, ``L_NKD = -T_t log S_t - gamma * lambda^2 * sum_{i != t} N(T_i^lambda)
    log N(S_i^lambda)`` (the normalized KD loss of Sec. 3, with ``lambda`` the temperature).

    For a sample of label ``t`` (``y`` below):

    - target part: ``-p^t_y log p^s_y`` with ``p = softmax(z)`` at temperature 1 (the
      teacher's target probability weights the student's target log-probability);
    - non-target part: the cross-entropy of the *normalized* non-target distributions,
      ``N(p_i^lambda) = p_i^lambda / sum_{j != y} p_j^lambda``, i.e. the softmax of the
      ``C - 1`` non-target logits divided by ``lambda``, times ``gamma * lambda^2``.

    Both parts are cross-entropies, as in the paper and the authors' ``NKDLoss``
    (yzd-v/cls_KD, ``mmcls/models/dis_losses/nkd.py``): the value includes the teacher's
    (constant) entropies, the gradient is that of the KL form. Defaults are that class's
    (``temp=1.0, gamma=1.5``). Computed in log-space from the logits (non-target logits
    gathered into ``[B, C-1]``), so saturated logits stay finite; with ``C = 2`` the
    non-target part is 0. The teacher logits are constants. ``reduction``: ``"batch"``
    (mean, as the authors' code), ``"class"`` (class-balanced) or ``"none"`` (``[B]``).
    """
    check_non_negative("gamma", gamma)
    check_logit_pair(student_logits, teacher_logits, temperature)
    batch, num_classes = student_logits.shape
    if num_classes < 2:
        raise ValueError(f"nkd_loss needs at least 2 classes, found {num_classes}")
    check_labels(labels, batch, num_classes)
    labels = labels.to(student_logits.device).long()
    s = promote(student_logits)
    t = promote(teacher_logits.detach()).to(s.dtype)
    index = labels.unsqueeze(1)
    log_p_s_target = F.log_softmax(s, dim=1).gather(1, index).squeeze(1)
    p_t_target = F.softmax(t, dim=1).gather(1, index).squeeze(1)
    target = -p_t_target * log_p_s_target

    others = non_target_index(labels, num_classes)
    _, s_others = split_target(s / temperature, labels, others)
    _, t_others = split_target(t / temperature, labels, others)
    log_q_s = F.log_softmax(s_others, dim=1)
    q_t = F.softmax(t_others, dim=1)
    non_target = -(q_t * log_q_s).sum(dim=1)

    per_sample = target + gamma * temperature**2 * non_target
    return reduce_per_sample(per_sample, labels, num_classes, reduction)
