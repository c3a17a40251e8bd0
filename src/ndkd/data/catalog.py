"""The names of every data set ndkd reads, in one place (no torch import: the config
validator and the CLI read it without loading the data stack)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetEntry:
    """What a config may say about data set ``name`` before anything is loaded."""

    name: str
    bundled: bool
    """Built from data shipped with a dependency (scikit-learn): ``data.root`` is unused."""
    summary: str
    task: str = "classification"
    """The task its labels are for: ``classification`` (one class per image),
    ``multilabel`` (a set of classes per image) or ``detection`` (boxes and their classes)."""


CATALOG: dict[str, DatasetEntry] = {
    entry.name: entry
    for entry in (
        DatasetEntry("cifar10", False, "CIFAR-10 python-pickle folder (or its .tar.gz)"),
        DatasetEntry("cifar100", False, "CIFAR-100 python-pickle folder (or its .tar.gz)"),
        DatasetEntry("digits", True, "scikit-learn's 8x8 handwritten digits, 10 classes"),
        DatasetEntry("digit_pairs", True, "two noisy digits side by side, 100 classes"),
        DatasetEntry(
            "imagefolder",
            False,
            "train/ and val/ folders with one sub-folder of images per class (ImageNet layout)",
        ),
        DatasetEntry(
            "voc2007",
            False,
            "PASCAL VOC 2007 (VOCdevkit/VOC2007 with JPEGImages/, Annotations/ and "
            "ImageSets/Main/{trainval,test}.txt), 20 classes",
            "multilabel",
        ),
        DatasetEntry(
            "coco2014",
            False,
            "COCO 2014 (annotations/instances_{train,val}2014.json, train2014/, val2014/), "
            "80 classes",
            "multilabel",
        ),
        DatasetEntry(
            "coco",
            False,
            "COCO 2017 detection (annotations/instances_{train,val}2017.json, train2017/, "
            "val2017/), 80 classes",
            "detection",
        ),
        DatasetEntry(
            "voc0712",
            False,
            "PASCAL VOC detection: VOC2007 + VOC2012 trainval for training, VOC2007 test for "
            "evaluation (VOCdevkit/VOC2007, VOCdevkit/VOC2012), 20 classes",
            "detection",
        ),
        DatasetEntry(
            "digit_boxes",
            True,
            "scikit-learn digits at random scales and places on noisy canvases, with boxes",
            "detection",
        ),
        DatasetEntry(
            "digit_canvas",
            True,
            "several scikit-learn digits on one canvas, labels = the digits present",
            "multilabel",
        ),
    )
}


def dataset_names() -> tuple[str, ...]:
    """Every accepted ``data.name``."""
    return tuple(CATALOG)


def is_bundled(name: str) -> bool:
    """True for data sets that need no ``data.root``."""
    return CATALOG[name].bundled


def task_of(name: str) -> str:
    """The task data set ``name`` has labels for."""
    return CATALOG[name].task
