"""``NDLoss``: the ND loss as a module that holds the class means and, if needed, a projector."""

from __future__ import annotations

import torch
from torch import nn

from ndkd.centers.store import ClassMeans
from ndkd.losses.nd import nd_loss
from ndkd.losses.reduction import REDUCTIONS, Reduction
from ndkd.projector import EmbeddingProjector


class NDLoss(nn.Module):
    """ND loss (Eq. 5-7) with the teacher class means as a buffer (moves with ``.to()``,
    saved in ``state_dict``) and an :class:`EmbeddingProjector` when ``student_dim`` differs
    from the means' dim. Add ``NDLoss.parameters()`` to the optimizer when a projector is
    built. The loss weight is the caller's: ``loss = ce + w * nd(s_emb, t_emb, y)``.
    """

    def __init__(
        self,
        centers: torch.Tensor | ClassMeans,
        student_dim: int | None = None,
        reduction: Reduction = "batch",
        projector_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, found {reduction!r}")
        means = centers if isinstance(centers, ClassMeans) else ClassMeans(centers.detach())
        means.validate()
        self.register_buffer("centers", means.means.detach().float().clone())
        self.reduction = reduction
        self.projector: nn.Module = nn.Identity()
        if student_dim is not None and student_dim != means.dim:
            self.projector = EmbeddingProjector(student_dim, means.dim, projector_dropout)

    def forward(
        self, student_emb: torch.Tensor, teacher_emb: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return nd_loss(
            self.projector(student_emb), teacher_emb, labels, self.centers, self.reduction
        )
