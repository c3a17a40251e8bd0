"""Batched CIFAR augmentation and normalization as tensor operations, on any device.

The standard CIFAR training transform is: zero-pad 4 pixels on each side, take a random
32x32 crop, flip horizontally with probability 1/2, scale to [0, 1] and normalize per
channel. Here it runs on a whole batch ``[B, C, H, W]`` at once (one gather, no loop over
samples, no PIL), on the CPU or the GPU, from ``uint8`` or float images. Random draws come
from an optional ``torch.Generator`` so a seed fixes the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


@dataclass(frozen=True)
class CropFlipParams:
    """Per-sample crop offsets (into the padded image) and flip flags, each of shape ``[B]``."""

    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor

    def to(self, device: torch.device | str) -> CropFlipParams:
        """The same parameters on ``device``."""
        return CropFlipParams(self.top.to(device), self.left.to(device), self.flip.to(device))

    def __getitem__(self, index: slice | torch.Tensor) -> CropFlipParams:
        return CropFlipParams(self.top[index], self.left[index], self.flip[index])


def draw_crop_flip(
    batch_size: int, padding: int = 4, generator: torch.Generator | None = None
) -> CropFlipParams:
    """Draw crop offsets uniformly in ``[0, 2 * padding]`` and fair coin flips.

    Draws happen on ``generator``'s device (the CPU by default) in a fixed order: offsets
    ``[2, B]`` (top row then left column), then flips ``[B]``.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * padding + 1, (2, batch_size), generator=generator, device=device)
    flip = torch.randint(0, 2, (batch_size,), generator=generator, device=device).bool()
    return CropFlipParams(offsets[0], offsets[1], flip)


def crop_flip(images: torch.Tensor, params: CropFlipParams, padding: int = 4) -> torch.Tensor:
    """Zero-pad ``images`` ``[B, C, H, W]`` by ``padding``, crop ``H x W`` at the given
    offsets and mirror the flagged samples; dtype and device are kept.

    One ``gather`` over the flattened padded planes, with per-sample source indices.
    """
    batch, channels, height, width = images.shape
    device = images.device
    params = params.to(device)
    padded = F.pad(images, (padding,) * 4).flatten(2)  # [B, C, (H + 2p) * (W + 2p)]
    rows = params.top[:, None] + torch.arange(height, device=device)  # [B, H]
    cols = torch.arange(width, device=device).expand(batch, width)
    cols = torch.where(params.flip[:, None], cols.flip(1), cols) + params.left[:, None]  # [B, W]
    source = rows[:, :, None] * (width + 2 * padding) + cols[:, None, :]  # [B, H, W]
    source = source.reshape(batch, 1, height * width).expand(batch, channels, height * width)
    return padded.gather(2, source).reshape(batch, channels, height, width)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(x - mean) / std`` per channel on ``[..., C, H, W]``; ``uint8`` is first scaled by
    1/255, float input is taken as already in [0, 1]."""
    range_max = 255.0 if images.dtype == torch.uint8 else 1.0
    mean_t = torch.as_tensor(mean, dtype=torch.float64)[:, None, None]
    std_t = torch.as_tensor(std, dtype=torch.float64)[:, None, None]
    # One fused multiply-add: x * (1 / (range_max * std)) - mean / std.
    scale = (1.0 / (range_max * std_t)).to(device=images.device, dtype=dtype)
    shift = (-mean_t / std_t).to(device=images.device, dtype=dtype)
    return torch.addcmul(shift, images.to(dtype), scale)


@dataclass(frozen=True)
class BatchTransform:
    """Normalization, preceded by pad + random crop + flip when ``train``.

    Call it on a batch ``[B, C, H, W]`` or a single image ``[C, H, W]``, optionally with a
    generator (``None``: PyTorch's global generator), or with pre-drawn ``params``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: bool = False
    padding: int = 4

    def __call__(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        params: CropFlipParams | None = None,
    ) -> torch.Tensor:
        single = images.dim() == 3
        batch = images.unsqueeze(0) if single else images
        if self.train:
            if params is None:
                params = draw_crop_flip(len(batch), self.padding, generator)
            batch = crop_flip(batch, params, self.padding)
        out = normalize(batch, self.mean, self.std)
        return out[0] if single else out


def cifar_transform(name: str, train: bool) -> BatchTransform:
    """The standard transform for ``"cifar10"`` or ``"cifar100"`` (training or evaluation)."""
    stats = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}
    if name not in stats:
        raise ValueError(f"no CIFAR normalization for {name!r}; expected one of {sorted(stats)}")
    mean, std = stats[name]
    return BatchTransform(mean, std, train=train)
