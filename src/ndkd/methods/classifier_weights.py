"""Teacher classifier weights: as ND centers (Table 5 "w/ weights"), and as a target for the
student's classifier weights (Table 5 "L2 of cls weights")."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.methods.base import BuildContext, StepOutputs, Term
from ndkd.methods.registry import register
from ndkd.models.adapter import final_linear
from ndkd.projector import dim_projector


def teacher_classifier_weight(context: BuildContext, term: str) -> torch.Tensor:
    """A constant ``[C, Dt]`` copy of the teacher classifier's weight, its rows checked
    against the class count and the teacher's probed embedding dim."""
    if context.teacher is None:
        raise ValueError(f"{term}: reads the teacher's classifier weights; set teacher.arch")
    weight = final_linear(context.teacher)[1].weight.detach().float().clone()
    if weight.shape[0] != context.num_classes:
        raise ValueError(
            f"{term}: the teacher classifier has {weight.shape[0]} classes, expected "
            f"{context.num_classes}"
        )
    probe = context.teacher_probe
    if probe is not None and weight.shape[1] != probe.embedding.shape[1]:
        raise ValueError(
            f"{term}: the teacher classifier takes {weight.shape[1]}-d inputs but the "
            f"teacher's embedding has dim {probe.embedding.shape[1]}"
        )
    return weight


@register("classifier_l2")
class ClassifierL2Term(Term):
    """Table 5 "L2 of cls weights": MSE between the student's classifier weight and the
    teacher's, ``mean((W_s P^T - W_t)^2)`` over all ``C x Dt`` entries; distils no features.

    When the embedding dims differ, ``P`` is a trainable bias-free ``Linear(Ds, Dt)`` on the
    student side (identity otherwise): the paper guides the *student* to produce weights
    like the teacher's, and its footnote 1 puts extra layers in the student to reach the
    teacher's dim, so the teacher's weights stay a fixed target. The student's classifier is
    read live every step (its parameters stay the student's, not this term's).
    """

    requires_teacher = True

    def __init__(self, context: BuildContext) -> None:
        super().__init__()
        if context.student is None:
            raise ValueError("classifier_l2: needs the student model (BuildContext.student)")
        target = teacher_classifier_weight(context, "classifier_l2")
        _, student = final_linear(context.student)
        if student.weight.shape[0] != target.shape[0]:
            raise ValueError(
                f"classifier_l2: the student has {student.weight.shape[0]} classes but the "
                f"teacher has {target.shape[0]}"
            )
        self.register_buffer("teacher_weight", target)
        # In a tuple so nn.Module does not register the student's layer as this term's own.
        self._student_classifier = (student,)
        self.projector = dim_projector(
            student.weight.shape[1], target.shape[1], partial(nn.Linear, bias=False)
        )

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        projected = self.projector(self._student_classifier[0].weight).float()
        return F.mse_loss(projected, self.teacher_weight)
