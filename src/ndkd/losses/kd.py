"""Classic logit distillation (Hinton et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ndkd.checks import check_logit_pair, check_positive, promote
from ndkd.losses.reduction import Reduction, reduce_per_sample


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """KD loss, ``L_kd = 1/N sum_i KL(q_i^t || q_i^s) * T^2`` (Sec. 3.1, Hinton et al.).

    ``q = softmax(z / T)``; the KL divergence is computed from log-probabilities of both
    sides (``log_softmax``), so saturated teachers give no ``log 0``. The teacher logits are
    constants. ``reduction``: ``"batch"`` (mean over the batch, the "batchmean" of the
    public code) or ``"none"`` (``[B]`` per-sample values, already scaled by ``T^2``).
    ``temperature`` may be a tensor (a scalar, ``[1]``, ``[B]`` or ``[B, 1]``: one learned
    ``T`` or one per sample, as CTKD learns it); the gradient then reaches it through both
    softmaxes and the ``T^2`` factor.
    """
    s, t, tau = logit_pair_at(student_logits, teacher_logits, temperature)
    log_p_s = F.log_softmax(s / tau, dim=1)
    log_p_t = F.log_softmax(t / tau, dim=1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * squared(tau)
    return reduce_per_sample(per_sample, None, None, reduction)


def logit_pair_at(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
    """The checked logits in float32 or better (the teacher's detached) and the temperature:
    a positive float as given, or a tensor as a ``[1, 1]`` / ``[B, 1]`` column in their
    dtype."""
    check_logit_pair(student_logits, teacher_logits, 1.0)
    s = promote(student_logits)
    t = promote(teacher_logits.detach()).to(s.dtype)
    if not isinstance(temperature, torch.Tensor):
        check_positive("temperature", temperature)
        return s, t, temperature
    batch, shape = s.shape[0], tuple(temperature.shape)
    if shape not in ((), (1,), (batch,), (1, 1), (batch, 1)):
        raise ValueError(
            f"temperature must be a scalar, [1], [{batch}] or [{batch}, 1], found shape {shape}"
        )
    return s, t, promote(temperature).to(s.dtype).reshape(-1, 1)


def squared(temperature: float | torch.Tensor) -> float | torch.Tensor:
    """``T^2`` per sample: a float, or a ``[1]`` / ``[B]`` tensor from a temperature column."""
    if isinstance(temperature, torch.Tensor):
        return temperature.squeeze(1) ** 2
    return temperature**2


def hard_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """DeiT's hard-label distillation (Touvron et al., ICML 2021, Sec. 3): the cross-entropy
    of the student's (distillation-head) logits with the teacher's decision,
    ``CE(z_s, argmax z_t)``, batch mean, in float32 or better; no gradient reaches the
    teacher."""
    check_logit_pair(student_logits, teacher_logits, 1.0)
    return F.cross_entropy(promote(student_logits), teacher_logits.detach().argmax(dim=1))
