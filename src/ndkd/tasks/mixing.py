"""Mixup and CutMix on a whole batch (each image mixed with the batch reversed, as timm's
``Mixup`` in batch mode), returning the class weights that the terms read as targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BatchMixer:
    """Mixes a training batch with probability ``prob``: CutMix (Beta(``cutmix``, ``cutmix``))
    with probability ``switch_prob`` when both are on, else mixup (Beta(``mixup``,
    ``mixup``)). Draws come from torch's global CPU generator (no device sync; a checkpoint
    restores it, so a resumed run mixes as an uninterrupted one).

    Returns the images and ``[B, C]`` weights: ``lam`` on each image's class and ``1 - lam``
    on the class of the image mixed in (for CutMix, ``lam`` is the area kept); a batch left
    unmixed gets one-hot weights.
    """

    num_classes: int
    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.mixup < 0 or self.cutmix < 0 or not (self.mixup or self.cutmix):
            raise ValueError("a batch mixer needs mixup > 0 or cutmix > 0 (both non-negative)")

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = F.one_hot(labels.long(), self.num_classes).to(torch.float32)
        if float(torch.rand(())) >= self.prob:
            return images, weights
        use_cutmix = self.cutmix > 0 and (
            self.mixup == 0 or float(torch.rand(())) < self.switch_prob
        )
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        other = images.flip(0)
        if use_cutmix:
            images, lam = _cut_and_paste(images, other, lam)
        else:
            images = images * lam + other * (1.0 - lam)
        return images, weights * lam + weights.flip(0) * (1.0 - lam)


def _cut_and_paste(
    images: torch.Tensor, other: torch.Tensor, lam: float
) -> tuple[torch.Tensor, float]:
    """Paste a box of ``other`` covering about ``1 - lam`` of the area (its centre uniform,
    clipped at the borders, as CutMix); return the images and the area fraction kept."""
    height, width = images.shape[-2:]
    ratio = (1.0 - lam) ** 0.5
    box_h, box_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    images = images.clone()
    images[..., top:bottom, left:right] = other[..., top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return images, kept
