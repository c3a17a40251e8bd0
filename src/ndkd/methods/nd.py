"""The ND term (dino-loss, Eq. 5-7): "X++" is X plus this term; with the Table-5 options
(classifier weights as centers, extra layers before the penultimate one)."""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import nn

from ndkd.centers.store import ClassMeans
from ndkd.checks import check_count
from ndkd.losses.reduction import Reduction
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher
from ndkd.methods.classifier_weights import teacher_classifier_weight
from ndkd.methods.registry import register
from ndkd.models.output import ModelOutput
from ndkd.nd_module import NDLoss

CenterSource = Literal["class_means", "classifier_weights"]


def embedding_class_means(context: BuildContext, term: str) -> ClassMeans:
    """The teacher class means of ``centers.path``, checked against the class count and the
    teacher's probed embedding dim."""
    if context.centers is None:
        where = (
            f"centers.path {context.centers_path!r} does not exist"
            if context.centers_path
            else "centers.path is not set"
        )
        raise ValueError(
            f"{term}: needs teacher class means, but {where}; compute them first: "
            "ndkd centers -c CONFIG"
        )
    if context.teacher_probe is not None:
        context.centers.check_compatible(
            context.num_classes, context.teacher_probe.embedding.shape[1], "the teacher"
        )
    return context.centers


def pooled_stage(output: ModelOutput, depth: int) -> torch.Tensor:
    """The stage ``depth`` places before the last one (``stages[-1 - depth]``), global-average
    pooled to ``[B, C]``."""
    return output.stages[-1 - depth].mean(dim=(2, 3))


@register("nd")
class NDTerm(Term):
    """ND loss on the penultimate embedding, optionally also on earlier layers.

    ``centers``: ``"class_means"`` (the paper's method; the file of ``centers.path``) or
    ``"classifier_weights"`` (Table 5 "w/ weights": the rows of the teacher's final
    ``nn.Linear`` weight, read once at build time; no centers file is used).

    ``layers``: Table 5 "layer-x", the dino-loss also applied to the ``x`` layers right before
    the penultimate one (``0``: penultimate only). The paper's public code has no layer-x
    variant; ndkd reads a "layer" as a network stage (the ResNets' ``layer1..3``): layer ``k``
    before the penultimate is ``stages[-1 - k]`` (``stages[-1]`` is the last stage, which the
    embedding is computed from: pooled directly, or after a final BN-ReLU or 1x1 conv),
    global-average pooled to a vector, for teacher and student alike. Its centers are the
    teacher's class means of that pooled feature over the training set, computed at build
    time in one teacher pass (with ``centers.transform``), and kept as buffers (saved in
    checkpoints). The term is the sum of the per-layer losses, each unweighted: the term's
    one weight applies to all of them.

    Wherever the student's dim differs from the centers' dim, the student feature passes
    through the BN -> Dropout -> Linear projector of the paper's code
    (:class:`ndkd.projector.EmbeddingProjector`, trained with the student, saved in
    checkpoints); the student classifier keeps the raw embedding. ``projector_dropout`` is
    its dropout; ``projector_init_std``: ``None`` keeps PyTorch's default init of its Linear
    (bias 0), as the public CIFAR code; a float draws the Linear's weight and bias from
    ``N(0, std^2)``, as the public ImageNet code (0.01).

    ``reduction``: ``"batch"`` (default; the public code's mean over the batch), ``"class"``
    (Eq. 7's class-balanced mean) or ``"none"``. Eq. 7 divides by C, all classes, which over
    the training set are all present; within a mini-batch ``"class"`` divides by the C'
    classes present instead, so the term estimates Eq. 7's value at its own scale whatever
    the batch size (``1/C`` would scale it by C'/C: ~0.72 for a CIFAR-100 batch of 128,
    which holds ~72 of the 100 classes on average); see
    :func:`ndkd.losses.reduction.reduce_per_sample`.
    """

    requires_teacher = True
    requires_centers = True
    reads_class_labels = True

    def __init__(
        self,
        context: BuildContext,
        reduction: Reduction = "batch",
        projector_dropout: float = 0.5,
        centers: CenterSource = "class_means",
        layers: int = 0,
        projector_init_std: float | None = None,
    ) -> None:
        super().__init__()
        if centers == "class_means":
            means = embedding_class_means(context, "nd")
        elif centers == "classifier_weights":
            means = ClassMeans(teacher_classifier_weight(context, "nd"))
            self.requires_centers = False
        else:
            raise ValueError(
                f"nd: centers must be 'class_means' or 'classifier_weights', found {centers!r}"
            )
        check_count("nd: layers", layers, minimum=0)
        if layers and centers != "class_means":
            raise ValueError("nd: layers > 0 needs centers: class_means (no weights per layer)")
        loss = partial(
            NDLoss,
            reduction=reduction,
            projector_dropout=projector_dropout,
            projector_init_std=projector_init_std,
        )
        self.loss = loss(means, context.student_probe.embedding.shape[1])
        self.layers = nn.ModuleList(
            loss(layer_means, layer_dim)
            for layer_means, layer_dim in _layer_centers(context, layers)
        )

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("nd", outputs)
        student, labels = outputs.student, outputs.targets  # mixed images: mixed class means
        loss = self.loss(student.embedding, teacher.embedding, labels)
        for depth, layer_loss in enumerate(self.layers, start=1):
            loss = loss + layer_loss(
                pooled_stage(student, depth), pooled_stage(teacher, depth), labels
            )
        return loss


def _layer_centers(context: BuildContext, layers: int) -> list[tuple[ClassMeans, int]]:
    """For depths ``1..layers``: the teacher's class means of the pooled stage, and the
    student's channel count there (all depths' means from one teacher pass)."""
    if layers == 0:
        return []
    teacher, student = context.teacher_probe, context.student_probe
    if teacher is None or context.teacher_class_means is None:
        raise ValueError("nd: layers > 0 computes the teacher's class means; set teacher.arch")
    for role, probe in (("teacher", teacher), ("student", student)):
        if len(probe.stages) <= layers:
            raise ValueError(
                f"nd: layers={layers} needs {layers + 1} stage outputs, but the {role} "
                f"returns {len(probe.stages)}"
            )
    depths = range(1, layers + 1)
    means = context.teacher_class_means(
        lambda output: torch.cat([pooled_stage(output, depth) for depth in depths], dim=1)
    )
    sizes = [pooled_stage(teacher, depth).shape[1] for depth in depths]
    parts = means.means.split(sizes, dim=1)
    return [
        (ClassMeans(part, means.counts, means.metadata), pooled_stage(student, depth).shape[1])
        for part, depth in zip(parts, depths)
    ]
