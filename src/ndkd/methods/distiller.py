"""The composition: named terms, each with one weight and one warm-up schedule."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ndkd.methods.base import MAIN_VIEW, VIEW_SEPARATOR, BuildContext, StepOutputs, TermSpec
from ndkd.methods.registry import available, build_term


class Distiller(nn.Module):
    """Turns step outputs into ``{term name: weighted loss}``; owns every term's modules.

    The weight of a term at the engine's ``epoch`` (counted from 0) is
    ``weight * min(1, (epoch + warmup_from) / warmup_epochs)`` (full weight when
    ``warmup_epochs`` is 0): with ``warmup_from`` 0 the warm-up counts epochs from 0, so its
    first epoch has no term (the public ND code's KD warm-up); with 1 it counts them from 1,
    so the first epoch already has ``1 / warmup_epochs`` of the weight (mdistiller, DKD's
    official code). The engine sums the returned values and logs each of them. The terms
    see the step outputs with ``epoch`` set to the engine's epoch.

    Views: a step may have several views of its images (``context.views``, the main one
    first). A term named ``<term>@<view>`` is the registered term ``<term>`` reading view
    ``<view>``; a plain name reads the main view. The loss is returned (and logged) under
    the full name, so ``mlkd`` and ``mlkd@strong`` are two terms with their own weights.
    A term naming a view the run does not have is refused when the method is built.
    """

    def __init__(self, terms: list[TermSpec], context: BuildContext) -> None:
        super().__init__()
        views = tuple(context.views)
        self.views = {term.name: term_view(term.name, views) for term in terms}
        self.terms = nn.ModuleDict(
            {term.name: _build(term.name, context, term.params) for term in terms}
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

    def forward(
        self, outputs: StepOutputs | Mapping[str, StepOutputs], epoch: int
    ) -> dict[str, torch.Tensor]:
        """``{term name: weighted loss}`` of one step: ``outputs`` of the main view, or of
        each view by name (every view a term reads must be there)."""
        by_view = {MAIN_VIEW: outputs} if isinstance(outputs, StepOutputs) else dict(outputs)
        for view, rows in by_view.items():
            if rows.epoch != epoch:
                by_view[view] = dataclasses.replace(rows, epoch=epoch)  # what the terms see
        losses = {}
        for name, term in self.terms.items():
            view = self.views[name]
            if view not in by_view:
                raise ValueError(
                    f"loss term {name!r} reads view {view!r}, but the step gave the views "
                    f"{', '.join(by_view)}"
                )
            losses[name] = term(by_view[view]) * self.weight_at(name, epoch)
        return losses


def split_term_name(name: str) -> tuple[str, str | None]:
    """``"<term>@<view>"`` -> ``(term, view)``; a plain name -> ``(name, None)``."""
    kind, separator, view = name.partition(VIEW_SEPARATOR)
    if separator and (not kind or not view or VIEW_SEPARATOR in view):
        raise ValueError(
            f"loss term {name!r}: a view is named as <term>{VIEW_SEPARATOR}<view>, "
            f"e.g. ce{VIEW_SEPARATOR}strong"
        )
    return kind, view if separator else None


def term_view(name: str, views: tuple[str, ...]) -> str:
    """The view term ``name`` reads among ``views`` (the main one first), checked."""
    view = split_term_name(name)[1]
    if view is None:
        return views[0] if views else MAIN_VIEW
    if view not in views:
        extra = "" if len(views) > 1 else " (a second view comes from data.strong_view)"
        raise ValueError(
            f"loss term {name!r} reads view {view!r}, but this run has the view"
            f"{'s' if len(views) > 1 else ''} {', '.join(views)}{extra}"
        )
    return view


def _build(name: str, context: BuildContext, params: dict) -> nn.Module:
    """The term of (possibly view-suffixed) ``name``; its errors name the full name."""
    kind, view = split_term_name(name)
    if view is None:
        return build_term(kind, context, params)
    if kind not in available():
        raise ValueError(
            f"unknown loss term {kind!r} in {name!r}; available: {', '.join(available())}"
        )
    try:
        return build_term(kind, context, params)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from error


def _warmup_from(term: TermSpec) -> int:
    """The term's ``warmup_from`` (0 for a spec that predates it), checked."""
    first = getattr(term, "warmup_from", 0)
    if isinstance(first, bool) or first not in (0, 1):
        raise ValueError(f"loss term {term.name!r}: warmup_from must be 0 or 1, found {first!r}")
    return int(first)
