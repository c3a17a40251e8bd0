"""Teacher classifier weights: as ND centers (Table 5 "w/ weights"), and as a target for the
student's classifier weights (Table 5 "L2 of cls weights")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.methods.base import BuildContext, StepOutputs, Term
from ndkd.methods.registry import register
from ndkd.models.adapter import unwrap


def classifier_of(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` of ``model``: ``get_classifier()`` of an ndkd model, else
    (a model ndkd never saw) the last ``nn.Linear`` it registers."""
    model = unwrap(model)
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        return getter()
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


def teacher_classifier_weight(context: BuildContext, term: str) -> torch.Tensor:
    """A constant ``[C, Dt]`` copy of the teacher classifier's weight, its rows checked
    against the class count and the teacher's probed embedding dim."""
    if context.teacher is None:
        raise ValueError(f"{term}: reads the teacher's classifier weights; set teacher.arch")
    weight = classifier_of(context.teacher).weight.detach().float().clone()
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
        student = classifier_of(context.student)
        if student.weight.shape[0] != target.shape[0]:
            raise ValueError(
                f"classifier_l2: the student has {student.weight.shape[0]} classes but the "
                f"teacher has {target.shape[0]}"
            )
        self.register_buffer("teacher_weight", target)
        # In a tuple so nn.Module does not register the student's layer as this term's own.
        self._student_classifier = (student,)
        student_dim, teacher_dim = student.weight.shape[1], target.shape[1]
        self.projector: nn.Module = nn.Identity()
        if student_dim != teacher_dim:
            self.projector = nn.Linear(student_dim, teacher_dim, bias=False)

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        projected = self.projector(self._student_classifier[0].weight).float()
        return F.mse_loss(projected, self.teacher_weight)
