"""In-memory image datasets and :func:`build_dataset`."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from ndkd.data.augment import BatchTransform
from ndkd.data.catalog import dataset_names
from ndkd.data.cifar import SPECS, read_cifar
from ndkd.data.digit_canvas import NUM_CLASSES as CANVAS_CLASSES
from ndkd.data.digit_canvas import read_digit_canvas
from ndkd.data.digit_pairs import NUM_CLASSES as PAIRS_CLASSES
from ndkd.data.digit_pairs import read_digit_pairs
from ndkd.data.digits import NUM_CLASSES as DIGITS_CLASSES
from ndkd.data.digits import read_digits


class ImageTensorDataset(Dataset[tuple[torch.Tensor, int | torch.Tensor]]):
    """A whole dataset held as one image tensor ``[N, C, H, W]`` and one label tensor: class
    indices ``[N]`` or multi-label targets ``[N, num_classes]``.

    ``dataset[i]`` is ``(image, label)``: the ``[C, H, W]`` image (through ``transform`` if
    one is set) and the label as an ``int`` (a class index) or a ``[num_classes]`` tensor (a
    target), so it works with ``torch.utils.data.DataLoader``.
    :class:`ndkd.data.InMemoryLoader` applies the same ``transform`` to whole batches instead.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        transform: BatchTransform | None = None,
    ):
        if images.dim() != 4 or labels.shape not in ((len(images),), (len(images), num_classes)):
            raise ValueError(
                "expected images [N, C, H, W] and labels [N] or [N, num_classes], got "
                f"{list(images.shape)} and {list(labels.shape)} (num_classes={num_classes})"
            )
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        label = self.labels[index]
        return image, int(label) if label.dim() == 0 else label

    def with_transform(self, transform: BatchTransform | None) -> ImageTensorDataset:
        """The same images and labels (shared memory) under ``transform``."""
        return ImageTensorDataset(self.images, self.labels, self.num_classes, transform)


def build_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    transform: BatchTransform | None = None,
) -> ImageTensorDataset:
    """Load dataset ``name`` (one of :func:`~ndkd.data.catalog.dataset_names`) split ``split``.

    CIFAR images are ``uint8`` ``[3, 32, 32]`` read from the standard python-pickle files
    under ``root`` (see :mod:`ndkd.data.cifar`); digits are ``float32`` ``[1, 8, 8]`` from
    scikit-learn, digit pairs ``float32`` ``[1, 8, 16]`` made from them
    (:mod:`ndkd.data.digit_pairs`), digit canvases ``float32`` ``[1, 16, 16]`` with ``int8``
    multi-hot targets ``[N, 10]`` (:mod:`ndkd.data.digit_canvas`); ``root`` is ignored for
    these.

    Raises:
        ValueError: unknown ``name`` or ``split``, missing ``root`` for CIFAR, or bad files.
        FileNotFoundError: CIFAR files not found under ``root``.
    """
    if name == "digits":
        images, labels = read_digits(split)
        return ImageTensorDataset(images, labels, DIGITS_CLASSES, transform)
    if name == "digit_pairs":
        images, labels = read_digit_pairs(split)
        return ImageTensorDataset(images, labels, PAIRS_CLASSES, transform)
    if name == "digit_canvas":
        images, targets = read_digit_canvas(split)
        return ImageTensorDataset(images, targets, CANVAS_CLASSES, transform)
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(dataset_names())}")
    if root is None:
        raise ValueError(f"{name} needs root: the folder holding {SPECS[name].folder}/")
    images, labels = read_cifar(name, root, split)
    return ImageTensorDataset(images, labels, SPECS[name].num_classes, transform)
