"""The LSHFM terms (Wang, Ge & Wu, TPAMI 2021): feature mimicking with L2 and LSH losses
(``lshfm``; ``lsh`` and ``lshl2``, the two variants of the authors' multi-label code)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ndkd.checks import check_count, check_positive
from ndkd.losses.lshfm import hash_offsets, lshfm_loss
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher
from ndkd.methods.registry import register
from ndkd.models.adapter import final_linear
from ndkd.projector import dim_projector

HASH_FUNCTIONS_PER_DIM = 32  # the public code's default N = 32 D
BIASES = ("zero", "mean", "median")


@register("lshfm")
class LSHFMTerm(Term):
    """L2 + LSH mimicking of the teacher's penultimate features, one term with one weight.

    The two parts share the student's projection and their 1:1 sum is fixed by the public
    code (its feature weight ``beta`` scales ``mse + bce``), so they form one term; set
    ``with_l2: false`` for the LSH-only variant. Modules: a trainable ``Linear(Ds, Dt)``
    projector on the student embedding when the probed dims differ (the public code puts
    this layer inside the student, before its classifier, as ``student.embedding_dim``
    does; here the classifier keeps the raw embedding). Buffers, drawn once at build and
    saved in checkpoints: N hyperplanes ``hash_weight`` ``[N, Dt]`` ~ ``Normal(0,
    hash_std^2)`` and ``hash_bias`` ``[N]``.

    Args:
        hash_functions: N; default ``32 * Dt`` (the public code's default).
        hash_std: std of the hyperplanes; default the std of the teacher classifier's
            weights (the public code's default).
        bias: ``"zero"`` (the public ImageNet and detection code), ``"median"`` (the public
            CIFAR and multi-label code) or ``"mean"``: minus the median / mean projection of
            the teacher's training-set features (one teacher pass with
            ``centers.transform``'s augmentation, as the authors' pass over their training
            loader; it holds every feature in CPU memory, ``N_train x Dt`` floats).
        with_l2: include the L2 (mean squared error) part.
        teacher_correct_only: average only over the samples the teacher classifies
            correctly (the public CIFAR code's default variant, ``lshl2_s``); single-label
            only.
    """

    requires_teacher = True
    term_name = "lshfm"

    def __init__(
        self,
        context: BuildContext,
        hash_functions: int | None = None,
        hash_std: float | None = None,
        bias: Literal["zero", "mean", "median"] = "zero",
        with_l2: bool = True,
        teacher_correct_only: bool = True,
    ) -> None:
        super().__init__()
        name = self.term_name
        if context.teacher_probe is None:
            raise ValueError(f"{name}: needs a teacher; set teacher.arch")
        if bias not in BIASES:
            raise ValueError(f"{name}: bias must be one of {BIASES}, found {bias!r}")
        teacher_dim = context.teacher_probe.embedding.shape[1]
        student_dim = context.student_probe.embedding.shape[1]
        count = HASH_FUNCTIONS_PER_DIM * teacher_dim if hash_functions is None else hash_functions
        check_count(f"{name}: hash_functions", count)
        std = _classifier_std(name, context) if hash_std is None else hash_std
        check_positive(f"{name}: hash_std", std)
        weight = torch.randn(count, teacher_dim) * std
        self.register_buffer("hash_weight", weight)
        self.register_buffer("hash_bias", _hash_bias(name, bias, context, weight))
        self.projector = dim_projector(student_dim, teacher_dim, nn.Linear)
        self.with_l2 = with_l2
        self.teacher_correct_only = teacher_correct_only
        self.reads_class_labels = teacher_correct_only

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher(self.term_name, outputs)
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


class _MultiLabelVariant(LSHFMTerm):
    """:class:`LSHFMTerm` with the L2 part fixed by the class (``with_l2_part``) and the
    defaults of the authors' multi-label code: the median bias, every sample averaged."""

    with_l2_part: bool

    def __init__(
        self,
        context: BuildContext,
        hash_functions: int | None = None,
        hash_std: float | None = None,
        bias: Literal["zero", "mean", "median"] = "median",
        teacher_correct_only: bool = False,
    ) -> None:
        super().__init__(
            context, hash_functions, hash_std, bias, self.with_l2_part, teacher_correct_only
        )


@register("lsh")
class LSHTerm(_MultiLabelVariant):
    """The LSH loss alone (the authors' multi-label ``lsh``)."""

    term_name = "lsh"
    with_l2_part = False


@register("lshl2")
class LSHL2Term(_MultiLabelVariant):
    """LSH + L2 (the authors' multi-label ``lshl2``)."""

    term_name = "lshl2"
    with_l2_part = True


def _classifier_std(name: str, context: BuildContext) -> float:
    """Std of the teacher classifier's weights (the default hyperplane std)."""
    if context.teacher is None:
        raise ValueError(
            f"{name}: hash_std defaults to the std of the teacher classifier's weights, but "
            "the teacher model is not available here; set hash_std"
        )
    teacher = context.teacher
    # A source model names its classifier (a RetinaNet's is a conv over patches).
    named = getattr(teacher, "classifier_name", None)
    layer = teacher.get_submodule(named) if named else final_linear(teacher)[1]
    return float(layer.weight.detach().float().std())


def _hash_bias(name: str, bias: str, context: BuildContext, weight: torch.Tensor) -> torch.Tensor:
    """Zeros, or minus the mean / median projection of the teacher's training features."""
    if bias == "zero":
        return torch.zeros(weight.shape[0])
    if context.teacher_features is None:
        raise ValueError(f"{name}: bias {bias!r} needs a teacher pass over the training set")
    features = context.teacher_features(lambda output: output.embedding)
    return hash_offsets(features, weight, bias)
