"""Two augmented views of each training image (MLKD's training, Jin, Wang, Lin, CVPR 2023):
a weak view (the data set's own training transform) and a strong one (a crop and flip drawn
independently, then a strong policy, :mod:`ndkd.data.strong_augment`).

Image folders (:func:`image_folder_views`): the folder's own dataset under
:class:`FolderViews`, whose transform returns both views of the decoded image: the weak one
is the folder's training transform, the strong one its RandomResizedCrop and flip drawn
again, the policy, and the same normalization (the authors' ImageNet views).

:class:`TwoViewDataset` wraps an in-memory :class:`~ndkd.data.datasets.ImageTensorDataset`
(CIFAR, the bundled digit sets) as a :class:`~ndkd.data.streaming.SeededDataset`, so it runs
through the streaming :class:`~ndkd.data.streaming.TrainLoader` with ``data.num_workers``
worker processes. Its sample is ``((weak, strong), label)``; the loader batches it into
``[(weak [B, C, H, W], strong [B, C, H, W]), labels [B]]`` (plus the dataset indices when
asked), the batch contract of :class:`ndkd.tasks.ClassificationTask`'s views.

Determinism: a sample's two views come from the generator of ``(seed, epoch, index)``
only, drawn in this order: the weak view's crop offsets (top, left) and flip, the strong
view's crop offsets and flip, then the strong policy's draws. Only training uses the views:
evaluation, class means and probes read the weak data set itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from ndkd.data.augment import BatchTransform, normalize
from ndkd.data.datasets import ImageTensorDataset
from ndkd.data.imagefolder import ImageFolderDataset, ImageTransform
from ndkd.data.streaming import SeededDataset
from ndkd.data.strong_augment import POLICIES

VIEWS = ("weak", "strong")
"""The views of a sample, in its order: the main (weak) view first."""


@dataclass(frozen=True)
class TwoViewTransform:
    """The augmentation of a :class:`TwoViewDataset`: the source's own transform (``None``:
    images used as they are) for the weak view, and the strong ``policy`` (a key of
    :data:`~ndkd.data.strong_augment.POLICIES`)."""

    weak: BatchTransform | None
    policy: str

    @property
    def train(self) -> bool:
        """Always: every access draws both views from the sample's generator."""
        return True


class TwoViewDataset(SeededDataset):
    """``dataset[key]`` is ``((weak, strong), label)`` for an image of ``source``.

    The weak view is ``source.transform`` with its crop and flip drawn from the sample's
    generator (the same operations as the in-memory loader's batched transform). The strong
    view: pad, crop and flip as the weak view does (drawn independently; none when the
    source has no training transform), the policy on the ``uint8`` image (float images in
    ``[0, 1]`` are scaled to ``uint8`` first, as the digit sets need), then the source's
    normalization (``x / 255`` without a transform).

    Raises:
        ValueError: an unknown policy, multi-label targets, or images with other than 1 or
        3 channels.
    """

    def __init__(self, source: ImageTensorDataset, policy: str = "mlkd", seed: int = 0):
        if policy not in POLICIES:
            raise ValueError(
                f"unknown strong view {policy!r}; available: {', '.join(sorted(POLICIES))}"
            )
        if source.labels.dim() != 1:
            raise ValueError("two views serve single-label data; these targets are multi-hot")
        if source.images.shape[1] not in (1, 3):
            raise ValueError(
                f"two views need 1- or 3-channel images, found {source.images.shape[1]}"
            )
        super().__init__(TwoViewTransform(source.transform, policy), seed)
        self.source = source

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def __len__(self) -> int:
        return len(self.source)

    def _sample(
        self, index: int, rng: np.random.Generator | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        image = self.source.images[index]
        transform = self.transform.weak
        crops = transform is not None and transform.train
        weak_draw = _draw_crop_flip(rng, transform.padding) if crops else None
        strong_draw = _draw_crop_flip(rng, transform.padding) if crops else None
        if transform is None:
            weak = image
        elif weak_draw is None:
            weak = transform(image)
        else:
            weak = _crop_flip(image.numpy(), weak_draw, transform.padding)
            weak = normalize(torch.from_numpy(weak), transform.mean, transform.std)
        strong = _as_uint8(image).numpy()
        if strong_draw is not None:
            strong = _crop_flip(strong, strong_draw, transform.padding)
        strong = _from_pil(POLICIES[self.transform.policy](_to_pil(strong), rng))
        if transform is None:
            strong = strong.float().div_(255.0)
        else:
            strong = normalize(strong, transform.mean, transform.std)
        return (weak, strong), int(self.source.labels[index])


def _draw_crop_flip(rng: np.random.Generator, padding: int) -> tuple[int, int, bool]:
    """One sample's crop offsets into the padded image (top, left) and its flip."""
    top, left = (int(v) for v in rng.integers(0, 2 * padding + 1, size=2))
    return top, left, bool(rng.random() < 0.5)


def _crop_flip(image: np.ndarray, draw: tuple[int, int, bool], padding: int) -> np.ndarray:
    """``image`` ``[C, H, W]`` zero-padded by ``padding``, cropped to ``H x W`` at the drawn
    offsets and mirrored when drawn (:func:`ndkd.data.augment.crop_flip` for one image)."""
    top, left, flip = draw
    _, height, width = image.shape
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    out = padded[:, top : top + height, left : left + width]
    return np.ascontiguousarray(out[:, :, ::-1] if flip else out)


def _as_uint8(image: torch.Tensor) -> torch.Tensor:
    """A ``[C, H, W]`` image as ``uint8`` (float images in ``[0, 1]`` scaled and rounded)."""
    if image.dtype == torch.uint8:
        return image
    return image.float().clamp(0, 1).mul(255).round().to(torch.uint8)


def _to_pil(image: np.ndarray) -> Image.Image:
    """``uint8`` ``[C, H, W]`` (C = 1 or 3) -> a PIL image (``L`` or ``RGB``)."""
    array = np.ascontiguousarray(image.transpose(1, 2, 0))
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def _from_pil(image: Image.Image) -> torch.Tensor:
    """A PIL image -> ``uint8`` ``[C, H, W]``."""
    array = np.array(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class FolderViews:
    """The two-view transform of an image folder's training images: ``(weak, strong)`` of
    one decoded ``uint8`` image, both drawn from the sample's generator (the weak view's
    draws first)."""

    weak: ImageTransform
    policy: str

    @property
    def train(self) -> bool:
        return True

    def __call__(
        self, image: torch.Tensor, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weak = self.weak(image, rng)
        cropped = F.to_pil_image(self.weak.crop_and_flip(image, rng))
        strong = F.pil_to_tensor(POLICIES[self.policy](cropped, rng))
        return weak, self.weak.normalize(strong)


def image_folder_views(source: ImageFolderDataset, policy: str = "mlkd") -> ImageFolderDataset:
    """``source`` (an image folder's training split) yielding ``((weak, strong), label)``.

    Raises:
        ValueError: an unknown policy, or ``source`` without a training transform.
    """
    if policy not in POLICIES:
        raise ValueError(
            f"unknown strong view {policy!r}; available: {', '.join(sorted(POLICIES))}"
        )
    if not source.transform.train:
        raise ValueError("two views are made of the training split (its training transform)")
    return source.with_transform(FolderViews(source.transform, policy))
