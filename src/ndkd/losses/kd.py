"""Classic logit distillation (Hinton et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ndkd.checks import check_logit_pair, promote
from ndkd.losses.reduction import Reduction, reduce_per_sample


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """KD loss, ``L_kd = 1/N sum_i KL(q_i^t || q_i^s) * T^2`` (Sec. 3.1, Hinton et al.).

    ``q = softmax(z / T)``; the KL divergence is computed from log-probabilities of both
    sides (``log_softmax``), so saturated teachers give no ``log 0``. The teacher logits are
    constants. ``reduction``: ``"batch"`` (mean over the batch, the "batchmean" of the
    public code) or ``"none"`` (``[B]`` per-sample values, already scaled by ``T^2``).
    """
    check_logit_pair(student_logits, teacher_logits, temperature)
    s = promote(student_logits)
    t = promote(teacher_logits.detach()).to(s.dtype)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * temperature**2
    return reduce_per_sample(per_sample, None, None, reduction)


def hard_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """DeiT's hard-label distillation (Touvron et al., ICML 2021, Sec. 3): the cross-entropy
    of the student's (distillation-head) logits with the teacher's decision,
    ``CE(z_s, argmax z_t)``, batch mean, in float32 or better; no gradient reaches the
    teacher."""
    check_logit_pair(student_logits, teacher_logits, 1.0)
    return F.cross_entropy(promote(student_logits), teacher_logits.detach().argmax(dim=1))
