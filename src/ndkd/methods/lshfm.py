"""The LSHFM term (Wang, Ge & Wu, TPAMI 2021): feature mimicking with L2 and LSH losses."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ndkd.checks import check_count, check_positive
from ndkd.losses.lshfm import lshfm_loss
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher
from ndkd.methods.registry import register
from ndkd.models.adapter import final_linear
from ndkd.projector import dim_projector

HASH_FUNCTIONS_PER_DIM = 32  # the public CIFAR code's default N = 32 D


@register("lshfm")
class LSHFMTerm(Term):
    """L2 + LSH mimicking of the teacher's penultimate features, one term with one weight.

    The two parts share the student's projection and their 1:1 sum is fixed by the public
    code (its feature weight ``beta`` scales ``mse + bce``), so they form one term; set
    ``with_l2: false`` for the LSH-only variant. Modules: a trainable ``Linear(Ds, Dt)``
    projector on the student embedding when the probed dims differ (the public code puts
    this layer inside the student, before its classifier; here the classifier keeps the raw
    embedding). Buffers, drawn once at build and saved in checkpoints: N hyperplanes
    ``hash_weight`` ``[N, Dt]`` ~ ``Normal(0, hash_std^2)`` and ``hash_bias`` ``[N]``.

    Args:
        hash_functions: N; default ``32 * Dt`` (the public CIFAR code's default).
        hash_std: std of the hyperplanes; default the std of the teacher classifier's
            weights (the public code's default).
        bias: ``"zero"`` (the public ImageNet and detection code) or ``"mean"``: minus the
            mean projection of the teacher's training-set features (one teacher pass, with
            ``centers.transform``'s augmentation), so each bit splits the data about evenly.
            The public CIFAR code uses the median, which needs every projection and is not
            offered; for these near-symmetric projections the mean is close to it.
        with_l2: include the L2 (mean squared error) part.
        teacher_correct_only: average only over the samples the teacher classifies
            correctly (the public code's default variant, ``lshl2_s``).
    """

    requires_teacher = True

    def __init__(
        self,
        context: BuildContext,
        hash_functions: int | None = None,
        hash_std: float | None = None,
        bias: Literal["zero", "mean"] = "zero",
        with_l2: bool = True,
        teacher_correct_only: bool = True,
    ) -> None:
        super().__init__()
        if context.teacher_probe is None:
            raise ValueError("lshfm: needs a teacher; set teacher.arch")
        if bias not in ("zero", "mean"):
            raise ValueError(f"lshfm: bias must be 'zero' or 'mean', found {bias!r}")
        teacher_dim = context.teacher_probe.embedding.shape[1]
        student_dim = context.student_probe.embedding.shape[1]
        count = HASH_FUNCTIONS_PER_DIM * teacher_dim if hash_functions is None else hash_functions
        check_count("lshfm: hash_functions", count)
        std = _classifier_std(context) if hash_std is None else hash_std
        check_positive("lshfm: hash_std", std)
        weight = torch.randn(count, teacher_dim) * std
        self.register_buffer("hash_weight", weight)
        offsets = _mean_bias(context, weight) if bias == "mean" else torch.zeros(count)
        self.register_buffer("hash_bias", offsets)
        self.projector = dim_projector(student_dim, teacher_dim, nn.Linear)
        self.with_l2 = with_l2
        self.teacher_correct_only = teacher_correct_only

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("lshfm", outputs)
        weights = None
        if self.teacher_correct_only:
            weights = (teacher.logits.argmax(dim=1) == outputs.labels).float()
        return lshfm_loss(
            self.projector(outputs.student.embedding),
            teacher.embedding,
            self.hash_weight,
            self.hash_bias,
            self.with_l2,
            weights,
        )


def _classifier_std(context: BuildContext) -> float:
    """Std of the teacher classifier's weights (the default hyperplane std)."""
    if context.teacher is None:
        raise ValueError(
            "lshfm: hash_std defaults to the std of the teacher classifier's weights, but the "
            "teacher model is not available here; set hash_std"
        )
    return float(final_linear(context.teacher)[1].weight.detach().float().std())


def _mean_bias(context: BuildContext, weight: torch.Tensor) -> torch.Tensor:
    """Minus the mean projection ``W mu`` of the teacher's training-set embeddings."""
    if context.teacher_class_means is None:
        raise ValueError("lshfm: bias 'mean' needs a teacher pass over the training set")
    means = context.teacher_class_means(lambda output: output.embedding)
    values = means.means.detach().double().cpu()
    if means.counts is None:
        mean = values.mean(dim=0)
    else:
        counts = means.counts.double().cpu()
        mean = (counts.unsqueeze(1) * values).sum(dim=0) / counts.sum()
    return -(weight.double() @ mean).float()
