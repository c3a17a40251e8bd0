"""Relational knowledge distillation, RKD (Park et al., CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ndkd.checks import check_non_negative, check_same_batch, promote
from ndkd.losses.nd import EPS


def rkd_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    """RKD loss ``lambda_D L_RKD-D + lambda_A L_RKD-A`` (Sec. 3.2 of the paper).

    Over the batch, with ``d_ij = ||x_i - x_j||``:

    - distance-wise potential ``psi_D(i, j) = d_ij / mu``, ``mu`` the mean of the non-zero
      ``d_ij`` (the distinct pairs, as the authors' code);
    - angle-wise potential ``psi_A(i, j, k) = <e_ji, e_ki>`` with
      ``e_ji = (x_j - x_i) / d_ij`` (0 when ``d_ij = 0``), the cosine of the angle at ``x_i``.

    Each part is the Huber loss ``l_delta`` (smooth-L1, ``delta = 1``) between the student's
    and the teacher's potentials, averaged over all ``B^2`` pairs and ``B^3`` triplets
    (degenerate ones included, where both sides are 0), as the authors' code. The defaults
    ``lambda_D = 25``, ``lambda_A = 50`` are those of the reference toolboxes (RepDistiller,
    mdistiller); a zero weight skips its part. Student and teacher dims may differ; the
    teacher features are constants. Memory: ``O(B^2 D)`` for the pairwise differences,
    ``O(B^3)`` for the angles.
    """
    check_non_negative("distance_weight", distance_weight)
    check_non_negative("angle_weight", angle_weight)
    check_same_batch("student_emb", student_emb, "teacher_emb", teacher_emb)
    s = promote(student_emb)
    t = promote(teacher_emb.detach()).to(s.dtype)
    with torch.autocast(s.device.type, enabled=False):
        loss = s.new_zeros(())
        s_diff, s_dist = _differences(s)
        t_diff, t_dist = _differences(t)
        if distance_weight:
            loss = loss + distance_weight * F.smooth_l1_loss(
                _distance_potential(s_dist), _distance_potential(t_dist)
            )
        if angle_weight:
            loss = loss + angle_weight * F.smooth_l1_loss(
                _angle_potential(s_diff, s_dist), _angle_potential(t_diff, t_dist)
            )
    return loss


def _differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``diff[i, j] = x_j - x_i`` ``[B, B, D]`` and its norms ``d_ij`` ``[B, B]``."""
    diff = x.unsqueeze(0) - x.unsqueeze(1)
    return diff, torch.linalg.vector_norm(diff, dim=2)


def _distance_potential(dist: torch.Tensor) -> torch.Tensor:
    """Distances divided by the mean of the non-zero ones (no host sync)."""
    count = (dist > 0).sum().clamp_min(1)
    return dist / (dist.sum() / count).clamp_min(EPS)


def _angle_potential(diff: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """``cos[i, j, k] = <e_ji, e_ki>``, ``[B, B, B]``."""
    unit = diff / dist.clamp_min(EPS).unsqueeze(2)
    return unit @ unit.transpose(1, 2)
