"""Data sources: a config's ``data`` section -> the training and evaluation splits, and
the loaders over a process's share of them.

Every data set named in :mod:`ndkd.data.catalog` is read here. The in-memory sets (CIFAR,
the bundled digit sets) come back as :class:`ImageTensorDataset` with their batched
transform (the CIFAR fast path, :class:`InMemoryLoader`); image folders and the multi-label
sets VOC2007 and COCO2014 stream from disk (:mod:`ndkd.data.streaming`, ``DataLoader``
workers). Both loaders shuffle epoch ``e`` with seed ``seed + e`` as ``DistributedSampler``
does, augment a sample as a function of ``(seed, e, index)`` only, and can start an epoch at
any batch (a mid-epoch resume). Multi-label sets (``voc2007``, ``coco2014``,
``digit_canvas``) come as :class:`~ndkd.data.multilabel.MultiLabelSplits` with ``[N, C]``
targets; detection sets (``coco``, ``voc0712``, ``digit_boxes``) as
:class:`~ndkd.data.detection.DetectionSplits` (with the ``metric`` they are reported with),
whose samples are ``(image, target dict)`` batched into tuples
(:func:`~ndkd.data.detection.collate_detection`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ndkd.data.augment import cifar_transform
from ndkd.data.catalog import CATALOG, is_bundled
from ndkd.data.cifar import SPECS, standard_size
from ndkd.data.coco import read_coco2014
from ndkd.data.coco_detection import read_coco
from ndkd.data.datasets import ImageTensorDataset, build_dataset
from ndkd.data.detection import BoxDataset, DetectionSplits, Target
from ndkd.data.digit_boxes import digit_box_splits
from ndkd.data.digit_canvas import CLASSES as CANVAS_CLASSES
from ndkd.data.imagefolder import ImageFolderSplits, read_image_folders
from ndkd.data.loader import InMemoryLoader
from ndkd.data.multilabel import MultiLabelSplits
from ndkd.data.streaming import SeededDataset, TrainLoader, eval_loader
from ndkd.data.voc import read_voc2007
from ndkd.data.voc_detection import read_voc0712


@dataclass
class Splits:
    """The training split (with the training augmentation), the evaluation split, and the
    training images under the evaluation transform (a class-means pass without
    augmentation)."""

    train: ImageTensorDataset
    test: ImageTensorDataset

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    def describe(self, name: str) -> dict[str, Any]:
        """The split sizes and class count, with the standard sizes where the data set has
        them and ``"standard_size": false`` when a split differs (a subset, or other data in
        the same format); a run stores this in its folder."""
        facts: dict[str, Any] = {
            "name": name,
            "num_classes": self.num_classes,
            "train_samples": len(self.train),
            "test_samples": len(self.test),
        }
        if name in SPECS:
            standard = {split: standard_size(name, split) for split in ("train", "test")}
            facts["standard_train_samples"] = standard["train"]
            facts["standard_test_samples"] = standard["test"]
            facts["standard_size"] = (len(self.train), len(self.test)) == (
                standard["train"],
                standard["test"],
            )
        return facts

    def train_without_augmentation(self) -> ImageTensorDataset:
        """The training images with the evaluation transform."""
        return self.train.with_transform(self.test.transform)


def load_splits(
    name: str,
    root: str | os.PathLike[str] | None,
    image_size: int = 224,
    eval_resize: int = 256,
    *,
    rand_augment: str = "",
    random_erasing: float = 0.0,
) -> Splits | ImageFolderSplits | MultiLabelSplits | DetectionSplits:
    """Read data set ``name`` (a :data:`~ndkd.data.catalog.CATALOG` key) from ``root``
    (``image_size``, ``eval_resize``, ``rand_augment``, ``random_erasing``: the image-folder
    transforms; ``image_size`` also the square side of VOC2007 and COCO2014; unused by the
    detection sets, whose images keep their size).

    Raises:
        ValueError: unknown ``name``. FileNotFoundError: ``root`` is not a folder.
    """
    if name not in CATALOG:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(CATALOG)}")
    if name == "digit_canvas":
        train, test = (build_dataset(name, None, split) for split in ("train", "test"))
        return MultiLabelSplits(CANVAS_CLASSES, train, test, "plain", in_channels=1)
    if name == "digit_boxes":
        return digit_box_splits()
    if is_bundled(name):
        return Splits(build_dataset(name, None, "train"), build_dataset(name, None, "test"))
    folder = Path(root) if root is not None else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(
            f"data.root {str(root)!r} does not exist; expected a folder holding the "
            f"{name} data ({CATALOG[name].summary})"
        )
    if name == "imagefolder":
        return read_image_folders(
            folder,
            image_size,
            eval_resize,
            rand_augment=rand_augment,
            random_erasing=random_erasing,
        )
    if name == "voc2007":
        return read_voc2007(folder, image_size)
    if name == "coco2014":
        return read_coco2014(folder, image_size)
    if name == "coco":
        return read_coco(folder)
    if name == "voc0712":
        return read_voc0712(folder)
    return Splits(
        build_dataset(name, folder, "train", cifar_transform(name, train=True)),
        build_dataset(name, folder, "test", cifar_transform(name, train=False)),
    )


Dataset = ImageTensorDataset | SeededDataset


def training_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    resident: torch.device | None = None,
    num_workers: int = 0,
    return_indices: bool = False,
    repeated_augmentations: int = 0,
) -> InMemoryLoader | TrainLoader:
    """Shuffled, augmented, resumable batches of this process's share of ``dataset``
    (``resident``: keep an in-memory image tensor set on that device; ``num_workers``:
    decoding processes of a per-sample set; ``repeated_augmentations``: a per-sample set's
    repeated augmentation count). Per-sample sets are batched by their ``collate``."""
    if isinstance(dataset, SeededDataset):
        return TrainLoader(
            dataset,
            batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            return_indices=return_indices,
            repeated_augmentations=repeated_augmentations,
        )
    return InMemoryLoader(
        dataset,
        batch_size,
        shuffle=True,
        device=resident,
        seed=seed,
        rank=rank,
        world_size=world_size,
        return_indices=return_indices,
    )


def evaluation_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    resident: torch.device | None = None,
    num_workers: int = 0,
) -> Iterable:
    """This process's share of ``dataset`` in order, every sample exactly once over all
    processes (no padding). An augmented split is augmented as in epoch 0 of ``seed``.
    Per-sample sets are batched by their ``collate``."""
    if isinstance(dataset, SeededDataset):
        return eval_loader(
            dataset.with_seed(seed),
            batch_size,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
        )
    if world_size > 1:
        part = slice(rank, None, world_size)
        dataset = ImageTensorDataset(
            dataset.images[part], dataset.labels[part], dataset.num_classes, dataset.transform
        )
    return InMemoryLoader(dataset, batch_size, seed=seed, device=resident)


def probe_images(dataset: Dataset, count: int, device: torch.device) -> torch.Tensor:
    """The first ``count`` training images, transformed as training sees them (for sizing a
    method's modules from a forward pass)."""
    if isinstance(dataset, SeededDataset):
        return torch.stack([dataset[i][0] for i in range(count)]).to(device)
    images = dataset.images[:count].to(device)
    return dataset.transform(images) if dataset.transform is not None else images


def probe_detection(
    dataset: BoxDataset, count: int, device: torch.device
) -> tuple[list[torch.Tensor], list[Target]]:
    """The first ``count`` training images and their targets, transformed as training sees
    them in epoch 0, on ``device`` (a detection model's probe batch)."""
    samples = [dataset[(i, 0)] for i in range(count)]
    images = [image.to(device) for image, _ in samples]
    targets = [{key: value.to(device) for key, value in target.items()} for _, target in samples]
    return images, targets
