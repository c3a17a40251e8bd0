"""The NKD term: normalized knowledge distillation (Yang et al., ICCV 2023) on the logits."""

from __future__ import annotations

import torch

from ndkd.checks import check_non_negative, check_positive
from ndkd.losses.nkd import nkd_loss
from ndkd.methods.base import (
    BuildContext,
    StepOutputs,
    Term,
    check_same_classes,
    need_teacher,
)
from ndkd.methods.registry import register


@register("nkd")
class NKDTerm(Term):
    """NKD: ``-p^t_y log p^s_y - gamma * T^2 * sum_{j != y} N(p^t_j) log N(p^s_j)`` with the
    non-target distributions ``N`` renormalized over the ``C - 1`` non-target classes at
    temperature ``T``, batch mean (:func:`ndkd.losses.nkd.nkd_loss`). Defaults: the
    authors' ``NKDLoss`` (``temp=1.0, gamma=1.5``, also their ImageNet setting); their
    CIFAR-100 config uses ``temperature=3.0, gamma=3.5``. No trainable modules."""

    requires_teacher = True
    reads_class_labels = True

    def __init__(self, context: BuildContext, temperature: float = 1.0, gamma: float = 1.5) -> None:
        super().__init__()
        check_positive("nkd: temperature", temperature)
        check_non_negative("nkd: gamma", gamma)
        if context.num_classes < 2:
            raise ValueError(f"nkd: needs at least 2 classes, found {context.num_classes}")
        check_same_classes("nkd", context)
        self.temperature, self.gamma = temperature, gamma

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("nkd", outputs)
        return nkd_loss(
            outputs.student.logits,
            teacher.logits,
            outputs.labels,
            self.temperature,
            self.gamma,
        )
