"""The DIST term: Pearson-correlation relations of the predictions (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

import torch

from ndkd.checks import check_non_negative, check_positive
from ndkd.losses.dist import dist_loss
from ndkd.methods.base import (
    BuildContext,
    StepOutputs,
    Term,
    check_same_classes,
    need_teacher,
)
from ndkd.methods.registry import register


@register("dist")
class DISTTerm(Term):
    """DIST: ``T^2 * (beta * inter + gamma * intra)`` on ``softmax(z / T)`` (defaults: the
    public DIST code's CIFAR-100 setting, ``dist_t4`` with beta = gamma = 1). No trainable
    modules."""

    requires_teacher = True

    def __init__(
        self,
        context: BuildContext,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 4.0,
    ) -> None:
        super().__init__()
        check_positive("dist: temperature", temperature)
        check_non_negative("dist: beta", beta)
        check_non_negative("dist: gamma", gamma)
        check_same_classes("dist", context)
        self.beta, self.gamma, self.temperature = beta, gamma, temperature

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("dist", outputs)
        return dist_loss(
            outputs.student.logits, teacher.logits, self.beta, self.gamma, self.temperature
        )
