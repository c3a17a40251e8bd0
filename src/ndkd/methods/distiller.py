"""The composition: named terms, each with one weight and one warm-up schedule."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ndkd.methods.base import BuildContext, StepOutputs, TermSpec
from ndkd.methods.registry import build_term


class Distiller(nn.Module):
    """Turns step outputs into ``{term name: weighted loss}``; owns every term's modules.

    The weight of a term at the engine's ``epoch`` (counted from 0) is
    ``weight * min(1, (epoch + warmup_from) / warmup_epochs)`` (full weight when
    ``warmup_epochs`` is 0): with ``warmup_from`` 0 the warm-up counts epochs from 0, so its
    first epoch has no term (the public ND code's KD warm-up); with 1 it counts them from 1,
    so the first epoch already has ``1 / warmup_epochs`` of the weight (mdistiller, DKD's
    official code). The engine sums the returned values and logs each of them. The terms
    see the step outputs with ``epoch`` set to the engine's epoch.
    """

    def __init__(self, terms: list[TermSpec], context: BuildContext) -> None:
        super().__init__()
        self.terms = nn.ModuleDict(
            {term.name: build_term(term.name, context, term.params) for term in terms}
        )
        for name, term in self.terms.items():
            if context.multi_label and term.reads_class_labels:
                raise ValueError(
                    f"loss term {name!r} reads one class label per image, but the multilabel "
                    "task gives a set of labels per image (its own loss is the bce term)"
                )
        self.weights = {term.name: term.weight for term in terms}
        self.warmups = {term.name: term.warmup_epochs for term in terms}
        self.warmup_from = {term.name: _warmup_from(term) for term in terms}

    @property
    def requires_teacher(self) -> bool:
        return any(term.requires_teacher for term in self.terms.values())

    @property
    def requires_indices(self) -> bool:
        return any(term.requires_indices for term in self.terms.values())

    @property
    def requires_centers(self) -> bool:
        return any(term.requires_centers for term in self.terms.values())

    def weight_at(self, name: str, epoch: int) -> float:
        """The weight of term ``name`` in the engine's epoch ``epoch`` (counted from 0)."""
        warmup = self.warmups[name]
        counted = epoch + self.warmup_from[name]
        factor = 1.0 if warmup <= 0 else min(1.0, counted / warmup)
        return self.weights[name] * factor

    def forward(self, outputs: StepOutputs, epoch: int) -> dict[str, torch.Tensor]:
        if outputs.epoch != epoch:
            outputs = dataclasses.replace(outputs, epoch=epoch)  # what the terms see
        losses = {}
        for name, term in self.terms.items():
            losses[name] = term(outputs) * self.weight_at(name, epoch)
        return losses


def _warmup_from(term: TermSpec) -> int:
    """The term's ``warmup_from`` (0 for a spec that predates it), checked."""
    first = getattr(term, "warmup_from", 0)
    if isinstance(first, bool) or first not in (0, 1):
        raise ValueError(f"loss term {term.name!r}: warmup_from must be 0 or 1, found {first!r}")
    return int(first)
