"""FitNets' hint loss, Romero et al., ICLR 2015."""

from __future__ import annotations

import torch

from ndkd.checks import check_same_shape, promote


def hint_loss(student_hint: torch.Tensor, teacher_hint: torch.Tensor) -> torch.Tensor:
    """Hint-based loss ``L_HT = ||u_h - r(v_g)||^2``: squared distance between the teacher's
    hint ``u_h`` and the regressed student guided layer ``r(v_g)`` (same shape, any rank).

    Reduction: the mean over every element (batch, channels and positions), as the
    reference toolboxes (``nn.MSELoss``) compute it; the paper's ``1/2`` and sum are folded
    into the term's weight. The teacher hint is a constant.
    """
    check_same_shape("student_hint", student_hint, "teacher_hint", teacher_hint)
    s = promote(student_hint)
    t = promote(teacher_hint.detach()).to(s.dtype)
    return (s - t).pow(2).mean()
