"""Student-embedding projector used when student and teacher embedding dims differ."""

from __future__ import annotations

from torch import Tensor, nn


class EmbeddingProjector(nn.Sequential):
    """``BatchNorm1d(Ds) -> Dropout(p) -> Linear(Ds, Dt)``, as the ND paper's public code.

    Applied to the student embedding before the ND loss only; the student's own classifier
    keeps the raw embedding. BN starts at weight 1, bias 0. The Linear keeps PyTorch's
    default weight init with bias 0 (the CIFAR recipes), or with ``init_std`` draws weight
    and bias from ``N(0, init_std)`` (the ImageNet recipes use 0.01).
    """

    def __init__(
        self, in_dim: int, out_dim: int, dropout: float = 0.5, init_std: float | None = None
    ) -> None:
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"projector dims must be positive, found {in_dim} -> {out_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), found {dropout}")
        linear = nn.Linear(in_dim, out_dim)
        if init_std is None:
            nn.init.zeros_(linear.bias)
        else:
            nn.init.normal_(linear.weight, 0.0, init_std)
            nn.init.normal_(linear.bias, 0.0, init_std)
        super().__init__(nn.BatchNorm1d(in_dim), nn.Dropout(dropout), linear)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, embedding: Tensor) -> Tensor:
        if embedding.dim() != 2 or embedding.shape[1] != self.in_dim:
            raise ValueError(
                f"projector expects [B, {self.in_dim}] student embeddings, found "
                f"{tuple(embedding.shape)}"
            )
        return super().forward(embedding)
