"""Datasets (CIFAR-10/100 pickle folders, image folders, scikit-learn digits), fast batched
augmentation and loaders."""

from ndkd.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    BatchTransform,
    CropFlipParams,
    cifar_transform,
    crop_flip,
    draw_crop_flip,
    normalize,
)
from ndkd.data.catalog import dataset_names
from ndkd.data.cifar import read_cifar
from ndkd.data.datasets import ImageTensorDataset, build_dataset
from ndkd.data.digit_pairs import read_digit_pairs
from ndkd.data.digits import read_digits
from ndkd.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderDataset,
    ImageFolderSplits,
    read_image_folders,
)
from ndkd.data.loader import InMemoryLoader
from ndkd.data.sources import Splits, load_splits

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "BatchTransform",
    "CropFlipParams",
    "ImageTensorDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderDataset",
    "ImageFolderSplits",
    "InMemoryLoader",
    "Splits",
    "build_dataset",
    "cifar_transform",
    "dataset_names",
    "crop_flip",
    "draw_crop_flip",
    "load_splits",
    "normalize",
    "read_cifar",
    "read_digit_pairs",
    "read_digits",
    "read_image_folders",
]
