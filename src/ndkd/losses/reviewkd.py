"""ReviewKD's hierarchical context loss (HCL), Chen et al., CVPR 2021."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ndkd.checks import check_feature_map, check_same_shape, promote

HCL_LEVELS: tuple[int, ...] = (4, 2, 1)


def hcl_loss(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Hierarchical context loss: pyramid-pooled MSE between paired feature maps, summed.

    For each pair ``(s, t)`` of ``[B, C, H, W]`` maps (the fused student features and the
    teacher's), the MSE of the maps themselves has weight 1 and the MSE of their ``l x l``
    adaptive average pools has weights 1/2, 1/4, 1/8 for the levels ``l`` = 4, 2, 1 that are
    smaller than ``H`` (the weight halves per level used); the pair's loss is the weighted
    sum divided by the sum of the weights used. Each MSE is the mean over all its elements
    (``B * C * l * l``), so the result is a batch mean (over images for a detector's FPN
    maps); pairs are summed, as in the public CIFAR, ImageNet and Detection code. The teacher
    maps are constants.
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(
            "hcl_loss needs as many student as teacher feature maps (at least one), found "
            f"{len(student_feats)} and {len(teacher_feats)}"
        )
    total = None
    for index, (student, teacher) in enumerate(zip(student_feats, teacher_feats)):
        check_feature_map(f"hcl_loss: student map {index}", student)
        check_same_shape(f"student map {index}", student, f"teacher map {index}", teacher)
        s = promote(student)
        t = promote(teacher.detach()).to(s.dtype)
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for level in HCL_LEVELS:
            if level >= s.shape[2]:
                continue
            weight /= 2
            pooled = F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
            loss = loss + weight * pooled
            weights += weight
        total = loss / weights if total is None else total + loss / weights
    return total
