"""The PKT term (Passalis & Tefas, ECCV 2018) on the penultimate embeddings."""

from __future__ import annotations

import torch

from ndkd.checks import check_positive
from ndkd.losses.pkt import PKT_EPS, pkt_loss
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher
from ndkd.methods.registry import register


@register("pkt")
class PKTTerm(Term):
    """KL between the teacher's and the student's cosine-kernel neighbour distributions over
    the batch. No trainable modules: the dims may differ."""

    requires_teacher = True

    def __init__(self, context: BuildContext, eps: float = PKT_EPS) -> None:
        super().__init__()
        check_positive("pkt: eps", eps)
        self.eps = eps

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("pkt", outputs)
        return pkt_loss(outputs.student.embedding, teacher.embedding, self.eps)
