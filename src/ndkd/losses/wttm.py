"""Weighted transformed teacher matching, WTTM (Zheng & Yang, "Knowledge Distillation Based
on Transformed Teacher Matching", ICLR 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ndkd.checks import check_logit_pair, check_positive, promote
from ndkd.losses.reduction import Reduction, reduce_per_sample


def wttm_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    gamma: float,
    weighted: bool = True,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """WTTM distillation term, ``1/N sum_i U_gamma(p_i) * KL(p_i^gamma || q_i)`` (the WTTM
    objective, Eq. 23 of the paper (Sec. 4), without its cross-entropy and its weight
    ``beta``).

    ``p = softmax(z_t)`` is the teacher's distribution and ``q = softmax(z_s)`` the
    student's, both at temperature 1 (no temperature on the student: "transformed teacher
    matching"). The teacher is power transformed and renormalized,
    ``p^gamma_j = p_j^gamma / U_gamma(p)``, with the power sum ``U_gamma(p) = sum_j p_j^gamma``
    (Eq. 22) as the sample-adaptive weight (in ``[1, C^(1-gamma)]`` for ``gamma < 1``: larger for a
    smoother teacher). ``p^gamma`` equals ``softmax(z_t / T)`` with ``T = 1 / gamma``.
    ``weighted=False`` drops the weight: TTM (Eq. 2, Sec. 3), ``KL(p^gamma || q)``.

    Matches the authors' ``WTTM`` / ``TTM`` classes (zkxufo/TTM,
    ``distiller_zoo/wttm.py``, ``ttm.py``; their ``l`` is ``gamma``): the weight is the raw
    power sum (not normalized over the batch) and there is no ``T^2`` factor. Computed in
    log-space: ``log p^gamma = gamma log p - logsumexp(gamma log p)`` and
    ``log U = logsumexp(gamma log p)``, so a saturated teacher stays finite. The teacher
    logits are constants. ``reduction``: ``"batch"`` (mean, as the authors' code) or
    ``"none"`` (``[B]``).
    """
    check_positive("gamma", gamma)
    check_logit_pair(student_logits, teacher_logits, 1.0)
    s = promote(student_logits)
    t = promote(teacher_logits.detach()).to(s.dtype)
    powered = gamma * F.log_softmax(t, dim=1)
    log_power_sum = torch.logsumexp(powered, dim=1, keepdim=True)
    log_p_gamma = powered - log_power_sum
    log_q = F.log_softmax(s, dim=1)
    per_sample = (log_p_gamma.exp() * (log_p_gamma - log_q)).sum(dim=1)
    if weighted:
        per_sample = log_power_sum.squeeze(1).exp() * per_sample
    return reduce_per_sample(per_sample, None, None, reduction)
