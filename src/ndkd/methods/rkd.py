"""The RKD term (Park et al., CVPR 2019) on the penultimate embeddings."""

from __future__ import annotations

import torch

from ndkd.checks import check_non_negative
from ndkd.losses.rkd import rkd_loss
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher
from ndkd.methods.registry import register


@register("rkd")
class RKDTerm(Term):
    """Distance- and angle-wise relations of the batch's embeddings, student vs teacher.

    ``distance_weight``/``angle_weight`` are the paper's inner ``lambda_D``/``lambda_A``
    (25 and 50 in RepDistiller and mdistiller); the term's own ``weight`` scales their sum.
    No trainable modules: relations are compared, so the dims may differ.
    """

    requires_teacher = True

    def __init__(
        self, context: BuildContext, distance_weight: float = 25.0, angle_weight: float = 50.0
    ) -> None:
        super().__init__()
        check_non_negative("rkd: distance_weight", distance_weight)
        check_non_negative("rkd: angle_weight", angle_weight)
        if distance_weight + angle_weight == 0:
            raise ValueError("rkd: distance_weight and angle_weight must not both be 0")
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("rkd", outputs)
        return rkd_loss(
            outputs.student.embedding,
            teacher.embedding,
            self.distance_weight,
            self.angle_weight,
        )
