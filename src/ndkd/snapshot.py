"""A frozen earlier copy of a model, for losses that compare against an earlier checkpoint."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ndkd.models.adapter import unwrap, with_embedding


class ModelSnapshot:
    """Holds ``Θ_previous`` of SIFN (Eq. 4): a frozen copy of the student, refreshed on demand.

    ``refresh(model)`` copies the live weights and buffers into the snapshot (call it every
    k steps or at each epoch start: the schedule decides how "early" the checkpoint is);
    ``embedding(x)`` returns the snapshot's embedding for ``x`` without gradient, computed
    in the live model's train/eval mode at the last refresh, so BN uses the same kind of
    statistics as the features it is compared with.
    """

    def __init__(self, model: nn.Module) -> None:
        # Copying an EmbeddingAdapter whole keeps the layer it captures the embedding from.
        self._copy = with_embedding(copy.deepcopy(model)).requires_grad_(False)
        self._inner = unwrap(self._copy)
        self._inner.train(model.training)

    @torch.no_grad()
    def refresh(self, model: nn.Module) -> None:
        """Copy the current state of ``model`` (same architecture) into the snapshot."""
        self._inner.load_state_dict(unwrap(model).state_dict())
        self._inner.train(model.training)

    @torch.no_grad()
    def embedding(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The snapshot's ``[B, D]`` embedding for ``inputs`` (a constant)."""
        return self._copy(*inputs).embedding
