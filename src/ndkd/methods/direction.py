"""Feature-direction baselines of the ND paper (Sec. 3.2, Table 4a/c): the student's
penultimate embedding pulled towards the direction of its class's teacher mean."""

from __future__ import annotations

from functools import partial

import torch

from ndkd.checks import check_positive
from ndkd.losses.direction import cosine_direction_loss, infonce_direction_loss
from ndkd.methods.base import BuildContext, StepOutputs, Term
from ndkd.methods.nd import embedding_class_means
from ndkd.methods.registry import register
from ndkd.projector import EmbeddingProjector, dim_projector

DIRECTION_REDUCTIONS = ("batch", "class")


class _CenterDirectionTerm(Term):
    """Holds the class means (a buffer) and the student projector (when the student's dim
    differs from the means' dim); subclasses apply their loss to the projected embedding."""

    requires_centers = True
    reads_class_labels = True

    def __init__(
        self, context: BuildContext, name: str, reduction: str, projector_dropout: float
    ) -> None:
        super().__init__()
        if reduction not in DIRECTION_REDUCTIONS:
            raise ValueError(
                f"{name}: reduction must be one of {DIRECTION_REDUCTIONS}, found {reduction!r}"
            )
        means = embedding_class_means(context, name).validate()
        self.register_buffer("centers", means.means.detach().float().clone())
        self.reduction = reduction
        self.projector = dim_projector(
            context.student_probe.embedding.shape[1],
            means.dim,
            partial(EmbeddingProjector, dropout=projector_dropout),
        )


@register("cosine")
class CosineTerm(_CenterDirectionTerm):
    """Eq. 1: ``1 - cos(f_s, c_y)`` to the teacher class mean of the label.

    ``reduction``: ``"batch"`` (mean over the batch, as the public code reduces the ND loss;
    default) or ``"class"`` (class-balanced, Eq. 1 as written).
    """

    def __init__(
        self, context: BuildContext, reduction: str = "batch", projector_dropout: float = 0.5
    ) -> None:
        super().__init__(context, "cosine", reduction, projector_dropout)

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        student = self.projector(outputs.student.embedding)
        return cosine_direction_loss(student, outputs.labels, self.centers, self.reduction)


@register("infonce")
class InfoNCETerm(_CenterDirectionTerm):
    """Eq. 2: cross-entropy of ``cos(f_s, c_j) / temperature`` over all class means, the
    label's mean as the positive (the paper: temperature 1). Reductions as ``cosine``."""

    def __init__(
        self,
        context: BuildContext,
        temperature: float = 1.0,
        reduction: str = "batch",
        projector_dropout: float = 0.5,
    ) -> None:
        super().__init__(context, "infonce", reduction, projector_dropout)
        check_positive("infonce: temperature", temperature)
        self.temperature = temperature

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        student = self.projector(outputs.student.embedding)
        return infonce_direction_loss(
            student, outputs.labels, self.centers, self.temperature, self.reduction
        )
