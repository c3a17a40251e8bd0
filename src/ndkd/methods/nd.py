"""The ND term (dino-loss, Eq. 5-7) on the penultimate embedding: "X++" is X plus this term."""

from __future__ import annotations

import torch

from ndkd.losses.reduction import Reduction
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher
from ndkd.methods.registry import register
from ndkd.nd_module import NDLoss


@register("nd")
class NDTerm(Term):
    """ND loss against the teacher class means from ``centers.path``.

    When the student's embedding dim (probed) differs from the means' dim, the student
    embedding passes through the BN -> Dropout -> Linear projector of the paper's code
    (trained with the student, saved in checkpoints); the student classifier keeps the raw
    embedding.
    """

    requires_teacher = True
    requires_centers = True

    def __init__(
        self,
        context: BuildContext,
        reduction: Reduction = "batch",
        projector_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if context.centers is None:
            raise ValueError(
                "nd: needs teacher class means; set centers.path "
                "(write them with `ndkd centers -c CONFIG`)"
            )
        if context.teacher_probe is not None:
            context.centers.check_compatible(
                context.num_classes, context.teacher_probe.embedding.shape[1], "the teacher"
            )
        student_dim = context.student_probe.embedding.shape[1]
        self.loss = NDLoss(context.centers, student_dim, reduction, projector_dropout)

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("nd", outputs)
        return self.loss(outputs.student.embedding, teacher.embedding, outputs.labels)
