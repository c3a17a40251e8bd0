"""``NDLoss``: the ND loss as a module that holds the class means and, if needed, a projector."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ndkd.centers.store import ClassMeans
from ndkd.losses.nd import nd_loss
from ndkd.losses.reduction import REDUCTIONS, Reduction
from ndkd.projector import EmbeddingProjector, dim_projector


class NDLoss(nn.Module):
    """ND loss (Eq. 5-7) with the teacher class means as a buffer (moves with ``.to()``,
    saved in ``state_dict``) and an :class:`EmbeddingProjector` when ``student_dim`` differs
    from the means' dim (``projector_dropout`` and ``projector_init_std`` are its ``dropout``
    and ``init_std``). Add ``NDLoss.parameters()`` to the optimizer when a projector is
    built. The loss weight is the caller's: ``loss = ce + w * nd(s_emb, t_emb, y)``.
    """

    def __init__(
        self,
        centers: torch.Tensor | ClassMeans,
        student_dim: int | None = None,
        reduction: Reduction = "batch",
        projector_dropout: float = 0.5,
        projector_init_std: float | None = None,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, found {reduction!r}")
        means = centers if isinstance(centers, ClassMeans) else ClassMeans(centers.detach())
        means.validate()
        self.register_buffer("centers", means.means.detach().float().clone())
        self.reduction = reduction
        self.projector = dim_projector(
            means.dim if student_dim is None else student_dim,
            means.dim,
            partial(EmbeddingProjector, dropout=projector_dropout, init_std=projector_init_std),
        )

    def forward(
        self, student_emb: torch.Tensor, teacher_emb: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return nd_loss(
            self.projector(student_emb), teacher_emb, labels, self.centers, self.reduction
        )
