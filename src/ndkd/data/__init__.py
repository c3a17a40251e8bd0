"""Datasets (CIFAR-10/100 pickle folders, image folders, scikit-learn digits, the
multi-label VOC2007, COCO2014 and digit canvases, the detection sets COCO 2017, VOC
2007 + 2012 and digit boxes), fast batched augmentation and loaders."""

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
from ndkd.data.coco import read_coco2014
from ndkd.data.coco_detection import read_coco
from ndkd.data.datasets import ImageTensorDataset, build_dataset
from ndkd.data.detection import (
    BoxDataset,
    DetectionDataset,
    DetectionSplits,
    InMemoryDetectionDataset,
    collate_detection,
)
from ndkd.data.digit_boxes import read_digit_boxes
from ndkd.data.digit_canvas import read_digit_canvas
from ndkd.data.digit_pairs import read_digit_pairs
from ndkd.data.digits import read_digits
from ndkd.data.imagefolder import ImageFolderDataset, ImageFolderSplits, read_image_folders
from ndkd.data.loader import InMemoryLoader
from ndkd.data.multilabel import MultiLabelDataset, MultiLabelSplits, SquareTransform
from ndkd.data.sources import Splits, load_splits, probe_detection
from ndkd.data.streaming import IMAGENET_MEAN, IMAGENET_STD, SeededDataset, StreamingDataset
from ndkd.data.voc import VOC_CLASSES, read_voc2007
from ndkd.data.voc_detection import read_voc0712

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "BatchTransform",
    "BoxDataset",
    "CropFlipParams",
    "DetectionDataset",
    "DetectionSplits",
    "ImageTensorDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolderDataset",
    "ImageFolderSplits",
    "InMemoryDetectionDataset",
    "InMemoryLoader",
    "MultiLabelDataset",
    "MultiLabelSplits",
    "SeededDataset",
    "Splits",
    "SquareTransform",
    "StreamingDataset",
    "VOC_CLASSES",
    "build_dataset",
    "cifar_transform",
    "collate_detection",
    "dataset_names",
    "crop_flip",
    "draw_crop_flip",
    "load_splits",
    "normalize",
    "probe_detection",
    "read_cifar",
    "read_coco",
    "read_coco2014",
    "read_digit_boxes",
    "read_digit_canvas",
    "read_digit_pairs",
    "read_digits",
    "read_image_folders",
    "read_voc0712",
    "read_voc2007",
]
