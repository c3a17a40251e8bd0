"""Reductions of per-sample losses: batch mean, class-balanced mean (Eq. 7), or none."""

from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["batch", "class", "none"]
REDUCTIONS: tuple[str, ...] = ("batch", "class", "none")


def reduce_per_sample(
    per_sample: torch.Tensor,
    labels: torch.Tensor | None,
    num_classes: int | None,
    reduction: str,
) -> torch.Tensor:
    """Reduce a ``[B]`` tensor of per-sample losses.

    - ``"batch"``: mean over the batch, ``1/N sum_i l_i`` (what the public ND code uses).
    - ``"class"``: class-balanced mean ``1/C' sum_k 1/|I_k| sum_{i in I_k} l_i`` as in the
      paper's Eq. 1-3 and 7, where the outer mean runs over the C' classes present in the
      batch (a class absent from the batch has no samples to average). Needs ``labels``;
      ``num_classes`` may be ``None``, then it is read from the labels (one device sync).

      Eq. 7 divides by C, all classes: over the whole training set every class is present,
      so there C' = C. In a mini-batch only C' <= C classes appear, and dividing by C' is
      deliberate: the mean over the present classes estimates Eq. 7's full-set value at
      its own scale (for a class-balanced set sampled uniformly, without bias), whereas
      ``1/C`` would scale it by C'/C, a factor that depends on the batch size. E.g. a
      CIFAR-100 batch of 128 holds on average ``100 (1 - 0.99^128)`` ~ 72 classes, so
      ``1/C`` would weight the term by ~0.72 (by ~0.47 with the public code's 64 per GPU),
      and an ImageNet batch of 256 by ~0.23.
    - ``"none"``: the ``[B]`` tensor itself.

    An empty batch reduces to 0 (not NaN), so a step with no samples adds nothing.
    """
    if reduction == "none":
        return per_sample
    if reduction == "batch":
        return per_sample.sum() / max(per_sample.shape[0], 1)
    if reduction == "class":
        if labels is None:
            raise ValueError('reduction="class" needs the labels of the samples')
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if labels.numel() else 1
        sums = per_sample.new_zeros(num_classes).index_add_(0, labels.long(), per_sample)
        counts = per_sample.new_zeros(num_classes).index_add_(
            0, labels.long(), torch.ones_like(per_sample)
        )
        present = (counts > 0).to(per_sample.dtype).sum().clamp_min(1)
        return (sums / counts.clamp_min(1)).sum() / present
    raise ValueError(f"reduction must be one of {REDUCTIONS}, found {reduction!r}")
