"""What every loss term sees: the step's outputs, and at build time the probed dims."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ndkd.centers.store import ClassMeans
from ndkd.models.output import ModelOutput


class TermSpec(Protocol):
    """How a term is configured (``ndkd.config.TermConfig`` is one).

    ``warmup_from`` (0 or 1) is the number the warm-up gives the first epoch (see
    :meth:`ndkd.methods.Distiller.weight_at`); a spec without it counts from 0.
    """

    name: str
    weight: float
    warmup_epochs: float
    params: dict[str, Any]
    warmup_from: int


FeatureSelector = Callable[[ModelOutput], torch.Tensor]

MAIN_VIEW = "weak"
"""The name of a step's main view: the training images under the data set's own transform
(a term named without a view suffix reads it)."""
VIEW_SEPARATOR = "@"
"""A term named ``<term>@<view>`` (e.g. ``ce@strong``) reads that view of the step."""


@dataclass
class StepOutputs:
    """One training step's forward results, as a term consumes them.

    ``images`` is the student's input batch (for terms that run another model on it, e.g.
    SIFN's earlier snapshot); ``indices`` are the samples' dataset indices when a term sets
    ``requires_indices`` (e.g. CRD's memory bank), else ``None``. ``mix_weights`` are the
    ``[B, C]`` class weights of mixed images (mixup / CutMix: ``lam`` on the image's own
    class, ``1 - lam`` on the class mixed in), else ``None``; ``labels`` stay each image's
    own class. The terms that follow the mixing weights are ``ce`` (soft targets) and ``nd``
    (class means mixed by the same weights); every other term reads ``labels``.
    ``epoch`` is the engine's epoch, counted from 0, for terms whose behaviour follows the
    training's progress (e.g. CTKD's curriculum); the :class:`ndkd.methods.Distiller` sets it
    from the epoch it is called with.
    """

    student: ModelOutput
    teacher: ModelOutput | None
    labels: torch.Tensor
    images: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    mix_weights: torch.Tensor | None = None
    epoch: int = 0

    @property
    def targets(self) -> torch.Tensor:
        """The mixing weights of mixed images, else the labels."""
        return self.labels if self.mix_weights is None else self.mix_weights


@dataclass
class BuildContext:
    """Facts a term needs to size its modules, read from a dry forward pass, never from
    model names: ``student_probe``/``teacher_probe`` are outputs for a tiny batch.

    ``student``/``teacher`` are the models themselves (for terms that read their weights,
    e.g. the teacher classifier as centers); ``teacher_class_means(select)`` computes the
    teacher's class means of any feature ``select(output) -> [B, D]`` over the training set
    (one teacher pass), for terms that need means of a layer other than the embedding.
    ``probe_images`` is the (transformed) batch the probes were computed on.
    ``centers`` are the class means of the file ``centers_path`` (``None`` when no such file
    exists: only the terms that read them refuse to build then). ``multi_label``: the
    labels are multi-hot ``[B, C]`` sets (the multilabel task), not class indices.
    ``teacher_features(select)`` returns ``select(output)`` of the teacher for every
    training sample (one pass, with ``centers.transform``'s augmentation, gathered over
    processes, rows in no particular order) as a float32 CPU tensor ``[N, D]``.
    ``views``: the names of the views each training step has, the main one first (a second
    view: ``data.strong_view``); the probes are of the main view.
    """

    num_classes: int
    student_probe: ModelOutput
    teacher_probe: ModelOutput | None = None
    centers: ClassMeans | None = None
    dataset_size: int = 0
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    teacher_class_means: Callable[[FeatureSelector], ClassMeans] | None = None
    probe_images: torch.Tensor | None = None
    centers_path: str | None = None
    multi_label: bool = False
    teacher_features: Callable[[FeatureSelector], torch.Tensor] | None = None
    views: tuple[str, ...] = (MAIN_VIEW,)


class Term(nn.Module):
    """A loss term: ``forward(outputs)`` returns one unweighted scalar.

    Subclasses declare their parameters as keyword arguments of ``__init__`` after the
    :class:`BuildContext`; the registry rejects any other key. ``requires_teacher`` and
    ``requires_centers`` tell the builder what must be loaded; ``requires_indices`` asks
    the loader for dataset indices. ``reads_class_labels``: the term reads ``labels`` as one
    class index per sample, so it refuses to build for multi-label targets.
    """

    requires_teacher: bool = False
    requires_centers: bool = False
    requires_indices: bool = False
    reads_class_labels: bool = False

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        raise NotImplementedError


def need_teacher(term: str, outputs: StepOutputs) -> ModelOutput:
    """The teacher outputs, or a clear error for a term used without a teacher."""
    if outputs.teacher is None:
        raise ValueError(f"loss term {term!r} needs a teacher; set teacher.arch")
    return outputs.teacher


def need_teacher_probe(term: str, context: BuildContext) -> ModelOutput:
    """The teacher's probed outputs, or a clear error for a term that sizes modules from them."""
    if context.teacher_probe is None:
        raise ValueError(f"loss term {term!r} needs a teacher; set teacher.arch")
    return context.teacher_probe


def check_same_classes(term: str, context: BuildContext) -> None:
    """Refuse a teacher whose logits do not have the student's class count."""
    teacher, student = context.teacher_probe, context.student_probe
    if teacher is not None and teacher.logits.shape[1] != student.logits.shape[1]:
        raise ValueError(
            f"{term}: the student has {student.logits.shape[1]} classes but the teacher has "
            f"{teacher.logits.shape[1]}"
        )
