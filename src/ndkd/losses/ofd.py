"""Overhaul of feature distillation (OFD), Heo et al., ICCV 2019: margin ReLU on the
teacher's pre-ReLU features and the partial L2 distance."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ndkd.checks import check_feature_map, check_same_shape, promote

# Below this probability of a negative response the conditional mean is numerically
# meaningless; the public code then uses -3 std, as ndkd does.
MIN_NEGATIVE_PROB = 1e-3


def ofd_margin(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-channel margin ``m = E[x | x < 0]`` for responses ``x ~ N(mean, std^2)``.

    ``m = mean - std * phi(mean / std) / Phi(-mean / std)`` (``phi``, ``Phi``: standard
    normal density and distribution), or ``-3 * std`` where ``Phi(-mean / std) <= 1e-3``, as
    the public code computes it. ``std`` is taken in absolute value; a zero ``std`` gives
    ``min(mean, 0)``. Computed in float64; returns ``mean``'s shape in at least float32,
    without gradient.
    """
    check_same_shape("mean", mean, "std", std)
    dtype = promote(mean).dtype
    mean = mean.detach().double()
    std = std.detach().double().abs().clamp_min(torch.finfo(torch.float64).tiny)
    z = mean / std
    negative = torch.special.ndtr(-z)
    density = torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)
    conditional = mean - std * density / negative.clamp_min(MIN_NEGATIVE_PROB)
    return torch.where(negative > MIN_NEGATIVE_PROB, conditional, -3 * std).to(dtype)


def ofd_loss(
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
    margins: Sequence[torch.Tensor],
) -> torch.Tensor:
    """OFD distillation loss ``sum_i d_p(sigma_m(T_i), S_i) / 2^(n-1-i)`` over ``n`` stages.

    ``S_i`` is the connected student feature and ``T_i`` the teacher's pre-ReLU feature of
    stage ``i`` (``[B, C, H, W]``, same shape), ``sigma_m(x) = max(x, m)`` the margin ReLU
    with the per-channel margin ``m_i`` ``[C]`` (:func:`ofd_margin`), and ``d_p`` the partial
    L2 distance: the squared difference summed over the elements, skipping those where
    ``S <= sigma_m(T) <= 0``. Reduction: summed over channels and positions, mean over the
    batch (the public code's sum / batch size); the deepest stage has weight 1 and each
    shallower one half the next. The teacher features are constants.
    """
    count = len(student_feats)
    if count == 0 or len(teacher_feats) != count or len(margins) != count:
        raise ValueError(
            "ofd_loss needs one teacher map and one margin per student map (at least one), "
            f"found {count} student maps, {len(teacher_feats)} teacher maps, "
            f"{len(margins)} margins"
        )
    total = None
    for index, (student, teacher, margin) in enumerate(zip(student_feats, teacher_feats, margins)):
        check_feature_map(f"ofd_loss: student map {index}", student)
        check_same_shape(f"student map {index}", student, f"teacher map {index}", teacher)
        if margin.shape != (student.shape[1],):
            raise ValueError(
                f"ofd_loss: margin {index} must have shape [{student.shape[1]}] (one per "
                f"channel), found {tuple(margin.shape)}"
            )
        s = promote(student)
        t = promote(teacher.detach()).to(s.dtype)
        t = torch.maximum(t, margin.detach().to(s).view(1, -1, 1, 1))
        kept = (s > t) | (t > 0)
        distance = torch.where(kept, (s - t).square(), torch.zeros_like(s)).sum()
        loss = distance / max(s.shape[0], 1) / 2 ** (count - 1 - index)
        total = loss if total is None else total + loss
    return total
