"""Feature norm and direction statistics of a model's embeddings (the paper's Fig. 2/4 view)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.models.adapter import with_embedding


@torch.no_grad()
def collect_embeddings(
    model: nn.Module, loader: Iterable, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``[N, D]`` (float32, CPU) and labels ``[N]`` of ``model`` over ``loader``.

    The model runs in eval mode (its mode is restored after); any classifier works (the
    embedding is the input of its final linear layer when it is not an ndkd model).
    """
    embed = with_embedding(model)
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        for images, targets, *_ in loader:
            features.append(embed(images.to(device)).embedding.float().cpu())
            labels.append(targets.cpu())
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("the loader yielded no batches; no embeddings to collect")
    return torch.cat(features), torch.cat(labels)


def cosine_to_class_means(
    features: torch.Tensor, labels: torch.Tensor, means: torch.Tensor
) -> torch.Tensor:
    """Per sample, the cosine between its embedding and the class mean of its label ``[N]``.

    Raises:
        ValueError: the embedding dim differs from the means' dim (no direct cosine), or a
            label has no mean.
    """
    if features.shape[1] != means.shape[1]:
        raise ValueError(
            f"embedding dim {features.shape[1]} differs from the class means' dim "
            f"{means.shape[1]}: no direct cosine"
        )
    if labels.numel() and int(labels.max()) >= means.shape[0]:
        raise ValueError(f"label {int(labels.max())} has no class mean ({means.shape[0]} classes)")
    centers = means.to(features.dtype).index_select(0, labels.long())
    return F.cosine_similarity(features, centers, dim=1, eps=1e-12)


@dataclass
class FeatureStats:
    """Per-sample embedding norms and cosines to the teacher class means (``None`` when the
    dims differ), with their means."""

    norms: torch.Tensor
    cosines: torch.Tensor | None

    @property
    def norm_mean(self) -> float:
        return float(self.norms.mean())

    @property
    def cosine_mean(self) -> float | None:
        return None if self.cosines is None else float(self.cosines.mean())


def feature_stats(
    features: torch.Tensor, labels: torch.Tensor, means: torch.Tensor | None
) -> FeatureStats:
    """Norms of ``features`` and, when ``means`` has their dim, cosines to the label's mean."""
    norms = torch.linalg.vector_norm(features, dim=1)
    comparable = means is not None and means.shape[1] == features.shape[1]
    cosines = cosine_to_class_means(features, labels, means) if comparable else None
    return FeatureStats(norms, cosines)
