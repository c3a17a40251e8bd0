"""Curriculum temperature for knowledge distillation, CTKD (Li et al., AAAI 2023).

The pieces of CTKD that are plain functions: the gradient reversal layer that makes the
temperature maximise the distillation loss the student minimises, the cosine curriculum of
its strength λ (the paper's Eq. 11) and the bound that keeps a learned temperature in a
positive range. ``kd_loss`` and ``dkd_loss`` take the learned temperature as a tensor (one
value, or one per sample), so that their gradient reaches it.
"""

from __future__ import annotations

import math

import torch

from ndkd.checks import (
    check_count,
    check_non_negative,
    check_positive,
    promote,
)


class GradientReversal(torch.autograd.Function):
    """Gradient reversal layer (Ganin & Lempitsky, 2015), CTKD's adversarial link: the
    forward pass is the identity, the backward pass multiplies the incoming gradient by
    ``-scale``. Use :func:`reverse_gradient`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * -ctx.scale, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged; in the backward pass its gradient becomes ``-scale * grad``.

    A parameter behind it descends the loss scaled by ``-scale``: it *ascends* the loss with
    step ``scale`` (CTKD's ``max`` over the temperature in its min-max objective). ``scale``
    is a non-negative float (``0``: the parameter gets no gradient).
    """
    check_non_negative("gradient reversal scale", scale)
    return GradientReversal.apply(x, float(scale))


def curriculum_lambda(
    epoch: float, lambda_min: float = 0.0, lambda_max: float = 1.0, loops: int = 10
) -> float:
    """CTKD's curriculum of the reversal strength (Eq. 11 of the paper):

    ``λ_n = λ_min + 1/2 (λ_max - λ_min) (1 + cos((1 + min(n, E_loops) / E_loops) π))``

    which rises from ``λ_min`` at ``n = 0`` to ``λ_max`` at ``n = E_loops`` along half a
    cosine and stays there (``n < 0`` counts as 0). ``epoch`` is ``n`` as the caller counts
    it: the authors' loop numbers epochs from 1, so their first epoch already has
    ``λ_1 = 1/2 (1 - cos(π / E_loops))`` of the range (0.0245 for ``E_loops = 10``). Their
    code writes the same schedule as the GRL's multiplier ``-λ_n`` (``--decay_max 0
    --decay_min -1``, ``cos(n π / E_loops)``). ``loops = 0``: ``λ_max`` from the start.
    """
    check_non_negative("lambda_min", lambda_min)
    check_non_negative("lambda_max", lambda_max)
    check_count("curriculum loops", loops, minimum=0)
    if loops == 0:
        return float(lambda_max)
    n = min(max(float(epoch), 0.0), float(loops))
    cosine = 1.0 + math.cos((1.0 + n / loops) * math.pi)
    return lambda_min + 0.5 * (lambda_max - lambda_min) * cosine


def bounded_temperature(raw: torch.Tensor, t_start: float, t_range: float) -> torch.Tensor:
    """``τ = t_start + t_range * sigmoid(raw)``, in float32 or better: a temperature in the
    open interval ``(t_start, t_start + t_range)`` whatever the raw prediction (the authors'
    ``opt.t_start + opt.t_end * sigmoid(T)``, so their ``--t_end`` is the range:
    ``(1, 21)`` by default). A positive lower bound is what keeps ``z / τ`` finite."""
    check_positive("t_start", t_start)
    check_positive("t_range", t_range)
    return t_start + t_range * torch.sigmoid(promote(raw))
