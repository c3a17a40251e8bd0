"""Logit terms: cross-entropy with the labels (binary per class for multi-label targets),
KD (Hinton et al., 2015) and DeiT's hard distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ndkd.checks import check_flag, check_fraction, check_positive
from ndkd.losses.kd import hard_distillation_loss, kd_loss
from ndkd.losses.standardize import standardize_pair
from ndkd.methods.base import (
    BuildContext,
    StepOutputs,
    Term,
    check_same_classes,
    need_teacher,
)
from ndkd.methods.registry import register
from ndkd.models.output import ModelOutput


@register("ce")
class CrossEntropyTerm(Term):
    """Cross-entropy of the student logits with the labels, or with the mixing weights of
    mixed images as soft targets (in fp32)."""

    reads_class_labels = True

    def __init__(self, context: BuildContext, label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_fraction("ce: label_smoothing", label_smoothing)
        self.label_smoothing = label_smoothing

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        return F.cross_entropy(
            outputs.student.logits.float(), outputs.targets, label_smoothing=self.label_smoothing
        )


@register("bce")
class BinaryCrossEntropyTerm(Term):
    """Multi-label classification loss: binary cross-entropy of each of the student's C
    logits with the image's multi-hot targets, mean over the ``B x C`` entries (PyTorch's
    ``BCEWithLogitsLoss``, the class criterion of LSHFM's multi-label code), in fp32."""

    def __init__(self, context: BuildContext) -> None:
        super().__init__()
        if not context.multi_label:
            raise ValueError(
                "bce: needs multi-hot targets (task: multilabel); single-label runs use ce"
            )

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            outputs.student.logits.float(), outputs.labels.float()
        )


def logit_pair(
    outputs: StepOutputs, teacher: ModelOutput, standardize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's logits as a KD-type term uses them: Z-scored per sample
    when ``standardize`` (logit standardization, Sun et al., CVPR 2024;
    :func:`ndkd.losses.standardize.standardize_pair`), else as they are."""
    if standardize:
        return standardize_pair(outputs.student.logits, teacher.logits)
    return outputs.student.logits, teacher.logits


@register("kd")
class KDTerm(Term):
    """KD: ``KL(softmax(t/T) || softmax(s/T)) * T^2``, batch mean.

    ``standardize``: Z-score both sides' logits per sample first (logit standardization,
    Sun et al., CVPR 2024); ``temperature`` is then their base temperature (e.g. 2, with a
    KD weight of 9 and a CE weight of 0.1, in the authors' CIFAR-100 recipes)."""

    requires_teacher = True

    def __init__(
        self, context: BuildContext, temperature: float = 4.0, standardize: bool = False
    ) -> None:
        super().__init__()
        check_positive("kd: temperature", temperature)
        check_flag("kd: standardize", standardize)
        check_same_classes("kd", context)
        self.temperature, self.standardize = temperature, standardize

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("kd", outputs)
        student_logits, teacher_logits = logit_pair(outputs, teacher, self.standardize)
        return kd_loss(student_logits, teacher_logits, self.temperature)


@register("hard_distill")
class HardDistillationTerm(Term):
    """DeiT's hard distillation: the student's distillation head (``heads["dist_logits"]``
    of a DeiT with a distillation token, e.g. ``timm:deit_base_distilled_patch16_224``)
    trained with cross-entropy to the teacher's argmax on the same (mixed) images."""

    requires_teacher = True

    def __init__(self, context: BuildContext) -> None:
        super().__init__()
        if "dist_logits" not in context.student_probe.heads:
            raise ValueError(
                "hard_distill: the student has no distillation head; use a DeiT with a "
                "distillation token (e.g. timm:deit_base_distilled_patch16_224)"
            )
        check_same_classes("hard_distill", context)

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("hard_distill", outputs)
        return hard_distillation_loss(outputs.student.heads["dist_logits"], teacher.logits)
