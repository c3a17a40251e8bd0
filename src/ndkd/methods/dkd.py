"""The DKD term: decoupled knowledge distillation (Zhao et al., CVPR 2022) on the logits."""

from __future__ import annotations

import torch

from ndkd.checks import check_flag, check_non_negative, check_positive
from ndkd.losses.dkd import dkd_loss
from ndkd.methods.base import (
    BuildContext,
    StepOutputs,
    Term,
    check_same_classes,
    need_teacher,
)
from ndkd.methods.logit import logit_pair
from ndkd.methods.registry import register


@register("dkd")
class DKDTerm(Term):
    """DKD: ``(alpha * TCKD + beta * NCKD) * T^2``, batch mean (defaults: the DKD paper's
    CIFAR-100 setting). No trainable modules.

    ``standardize``: Z-score both sides' logits per sample first (logit standardization,
    Sun et al., CVPR 2024); ``temperature`` is then their base temperature. The authors'
    code multiplies ``alpha`` and ``beta`` by its KD weight (e.g. 9) and sets ``T`` to the base
    temperature (e.g. 2) when standardizing."""

    requires_teacher = True
    reads_class_labels = True

    def __init__(
        self,
        context: BuildContext,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        check_positive("dkd: temperature", temperature)
        check_non_negative("dkd: alpha", alpha)
        check_non_negative("dkd: beta", beta)
        check_flag("dkd: standardize", standardize)
        check_same_classes("dkd", context)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.standardize = standardize

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("dkd", outputs)
        student_logits, teacher_logits = logit_pair(outputs, teacher, self.standardize)
        return dkd_loss(
            student_logits,
            teacher_logits,
            outputs.labels,
            self.alpha,
            self.beta,
            self.temperature,
        )
