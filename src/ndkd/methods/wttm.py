"""The WTTM term: weighted transformed teacher matching (Zheng & Yang, ICLR 2024)."""

from __future__ import annotations

import torch

from ndkd.checks import check_positive
from ndkd.losses.wttm import wttm_loss
from ndkd.methods.base import (
    BuildContext,
    StepOutputs,
    Term,
    check_same_classes,
    need_teacher,
)
from ndkd.methods.registry import register


@register("wttm")
class WTTMTerm(Term):
    """WTTM: ``U_gamma(p_t) * KL(p_t^gamma || p_s)``, batch mean, with the teacher's
    distribution power transformed (``p^gamma`` renormalized, i.e. teacher temperature
    ``1 / gamma``), the student at temperature 1 and the power sum ``U_gamma(p_t)`` as the
    sample weight (:func:`ndkd.losses.wttm.wttm_loss`). The paper's ``beta`` is this term's
    weight. ``gamma`` (the authors' ``--ttm_l``) is set per teacher-student pair; the default
    0.2 is the WTTM value of the authors' README example (vgg13 -> vgg8). No trainable
    modules, no labels."""

    requires_teacher = True

    def __init__(self, context: BuildContext, gamma: float = 0.2) -> None:
        super().__init__()
        check_positive("wttm: gamma", gamma)
        check_same_classes("wttm", context)
        self.gamma = gamma

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("wttm", outputs)
        return wttm_loss(outputs.student.logits, teacher.logits, self.gamma)
