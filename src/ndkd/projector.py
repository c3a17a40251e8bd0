"""Student-embedding projectors, used when student and teacher feature dims differ."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ndkd.checks import check_count, check_fraction, check_positive


class EmbeddingProjector(nn.Sequential):
    """``BatchNorm1d(Ds) -> Dropout(p) -> Linear(Ds, Dt)``, as the ND paper's public code.

    Applied to the student embedding before the ND loss only; the student's own classifier
    keeps the raw embedding. BN starts at weight 1, bias 0. The Linear keeps PyTorch's
    default weight init with bias 0 (the public CIFAR code), or with ``init_std`` draws weight
    and bias from ``N(0, init_std^2)`` (the public ImageNet code uses 0.01).
    """

    def __init__(
        self, in_dim: int, out_dim: int, dropout: float = 0.5, init_std: float | None = None
    ) -> None:
        check_count("projector in_dim", in_dim)
        check_count("projector out_dim", out_dim)
        check_fraction("projector dropout", dropout)
        linear = nn.Linear(in_dim, out_dim)
        if init_std is None:
            nn.init.zeros_(linear.bias)
        else:
            check_positive("projector init_std", init_std)
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


def dim_projector(
    in_dim: int, out_dim: int, layer: Callable[[int, int], nn.Module] = EmbeddingProjector
) -> nn.Module:
    """``layer(in_dim, out_dim)`` when the dims differ, else ``nn.Identity()``.

    ``layer`` builds the trainable map (default: the paper's :class:`EmbeddingProjector` with
    its defaults; e.g. ``nn.Linear`` for LSHFM's public code).
    """
    return nn.Identity() if in_dim == out_dim else layer(in_dim, out_dim)
