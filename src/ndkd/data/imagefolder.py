"""Image folders in the ImageNet layout: ``root/{train,val}/<class>/<image>``.

Reading: the file list is built with ``os.scandir`` (no per-file ``stat``) and kept in NumPy
arrays (one byte buffer of names, offsets and labels), so worker processes share it without
copy-on-write growth. Classes are the sorted folder names, the same for both splits. The
datasets stream from disk through :mod:`ndkd.data.streaming` (decoding, per-sample seeding,
the loaders).

Transforms (the public ImageNet recipe, on the torchvision tensor backend): training is
RandomResizedCrop(image_size, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip;
evaluation is Resize(eval_resize) + CenterCrop(image_size); both end in
ToDtype(float32, scale) + Normalize(ImageNet mean/std). JPEGs are decoded by
``torchvision.io.decode_jpeg`` (libjpeg-turbo: the same pixels as Pillow, faster), other
formats by Pillow, into a ``uint8`` tensor resized by torch's antialiased bilinear
interpolation (``torchvision.transforms.v2.functional``; much faster than Pillow's resize):
the evaluation tensors equal torchvision's ``v2`` pipeline on the Pillow-decoded image bit
for bit, and are within resampling rounding of the classic PIL pipeline
(``transforms.Resize`` on PIL images).

Optional training augmentations (timm's, the DeiT recipe; need the ``timm`` extra):
RandAugment (``rand_augment``, a timm policy string) after the crop and flip, and random
erasing (``random_erasing``, a probability; per-pixel normal noise) after normalization.
RandAugment works on PIL images: with it the cropped tensor makes a round trip through
PIL (two copies of an ``image_size``-square ``uint8`` image, small beside decoding);
without it the tensor path is untouched.

Determinism: the crop and flip of sample ``i`` in epoch ``e`` come from a NumPy generator
seeded with ``(seed, e, i)`` (see :mod:`ndkd.data.streaming`). timm's augmentations draw
from Python's, NumPy's and torch's global generators: around them these are seeded from
the same per-sample generator (after the crop's draws) and restored afterwards, so the
samples stay deterministic and the caller's global random state is left as it was.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ndkd.data.streaming import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NameBuffer,
    StreamingDataset,
    normalize_image,
)

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"})
"""File extensions read as images (compared lower-cased)."""
IMAGENET_TRAIN_SAMPLES, IMAGENET_VAL_SAMPLES = 1_281_167, 50_000
_WNID = re.compile(r"n\d{8}")
_SPLITS = ("train", "val")
_SHOWN = 20  # names listed in an error message before "... and N more"
_CROP_DRAWS = 41  # uniforms of one training crop and flip
_RAND_AUGMENT_SECTION = re.compile(r"(mstd|mmax|inc|m|n|p)(\d.*)")
_INTEGER_SECTIONS = frozenset({"mmax", "inc", "m", "n"})
_TIMM_MISSING = (
    "data.rand_augment and data.random_erasing use timm's augmentations: pip install 'ndkd[timm]'"
)


# ---------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class _FileList:
    """The images of one split: file names (one buffer) and labels in NumPy arrays (no
    per-file Python objects)."""

    folder: str
    classes: tuple[str, ...]
    names: NameBuffer
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.folder, self.classes[self.labels[index]], self.names[index])


def _shown(names: list[str]) -> str:
    more = f" ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _class_folders(split: Path) -> list[str]:
    with os.scandir(split) as entries:
        return sorted(e.name for e in entries if not _is_hidden(e.name) and e.is_dir())


def _image_names(folder: str) -> tuple[list[str], int]:
    """Sorted image file names in ``folder`` and the count of other (non-hidden) files."""
    names, other = [], 0
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if _is_hidden(name):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                names.append(name)
            else:
                other += 1
    names.sort()
    return names, other


def _list_split(split: Path, classes: list[str]) -> _FileList:
    per_class, empty, ignored = [], [], 0
    for name in classes:
        images, other = _image_names(os.path.join(split, name))
        if not images:
            empty.append(str(split / name))
        per_class.append(images)
        ignored += other
    if empty:
        raise ValueError(
            f"class folders without images (one of {sorted(IMAGE_EXTENSIONS)}): {_shown(empty)}"
        )
    if ignored:
        logger.info("%s: ignored %d entries that are not image files", split, ignored)
    counts = np.array([len(images) for images in per_class], dtype=np.int64)
    names = NameBuffer.of([name for images in per_class for name in images])
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return _FileList(str(split), tuple(classes), names, labels)


# ---------------------------------------------------------------------------------------
# Transforms


def random_resized_crop_box(
    height: int,
    width: int,
    draws: list[float],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a RandomResizedCrop, torchvision's algorithm: up to 10 tries
    of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``,
    else the largest central crop within ``ratio``. ``draws``: 40 uniforms in [0, 1)."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for attempt in range(10):
        u_area, u_ratio, u_top, u_left = draws[4 * attempt : 4 * attempt + 4]
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_low + (log_high - log_low) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _check_rand_augment(policy: str) -> None:
    """Refuse what timm's parser would reject or silently skip (sections without a value)."""
    sections = policy.split("-")
    if sections[0] != "rand":
        raise ValueError(
            f"data.rand_augment: {policy!r} is not a RandAugment policy: expected 'rand' "
            "followed by '-'-separated sections such as m9, n2, mstd0.5, inc1, p0.5, mmax10, "
            "tweights (e.g. 'rand-m9-mstd0.5-inc1')"
        )
    for section in sections[1:]:
        if section.startswith("t"):
            continue  # the transform set (timm: weights, 3a, 3aw, else the default set)
        match = _RAND_AUGMENT_SECTION.fullmatch(section)
        try:
            if match is None:
                raise ValueError(section)
            key, value = match.groups()
            (int if key in _INTEGER_SECTIONS else float)(value)
        except ValueError:
            raise ValueError(
                f"data.rand_augment: unknown section {section!r} in {policy!r} (known: m<int>, "
                "n<int>, mstd<float>, mmax<int>, inc<0|1>, p<float>, t<name>)"
            ) from None


def timm_augmentations(
    image_size: int, rand_augment: str = "", random_erasing: float = 0.0
) -> tuple[Any, Any]:
    """timm's ``(RandAugment, RandomErasing)`` transforms, each ``None`` when off.

    RandAugment gets the hparams of timm's ``create_transform`` for this size and the
    ImageNet mean (``translate_const=int(0.45 * image_size)``, ``img_mean``) and our crop's
    bilinear interpolation (what ``create_transform(interpolation="bilinear")`` passes);
    random erasing is ``RandomErasing(random_erasing, mode="pixel", device="cpu")``.

    Raises:
        ValueError: an invalid policy or probability, or timm is not installed.
    """
    if not 0.0 <= random_erasing <= 1.0:
        raise ValueError(f"data.random_erasing must be in [0, 1], got {random_erasing}")
    if not rand_augment and not random_erasing:
        return None, None
    if rand_augment:
        _check_rand_augment(rand_augment)
    try:
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing
    except ImportError as error:
        raise ValueError(_TIMM_MISSING) from error
    augment = erase = None
    if rand_augment:
        hparams = {
            "translate_const": int(image_size * 0.45),
            "img_mean": tuple(min(255, round(255 * x)) for x in IMAGENET_MEAN),
            "interpolation": Image.Resampling.BILINEAR,
        }
        try:
            augment = rand_augment_transform(rand_augment, hparams)
        except (AssertionError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"data.rand_augment: invalid policy {rand_augment!r}") from error
    if random_erasing:
        erase = RandomErasing(random_erasing, mode="pixel", device="cpu")
    return augment, erase


@contextmanager
def _global_rngs_seeded_from(rng: np.random.Generator) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's (CPU) global generators from draws of ``rng``;
    restore their states on exit. Not thread-safe (neither are the global generators)."""
    python_seed, torch_seed = rng.integers(2**63, size=2).tolist()
    numpy_seed = rng.integers(2**32, size=4, dtype=np.uint32)
    saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    random.seed(python_seed)
    np.random.seed(numpy_seed)
    torch.default_generator.manual_seed(torch_seed)  # not torch.manual_seed: leaves CUDA's
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.default_generator.set_state(saved[2])


@dataclass(frozen=True)
class ImageTransform:
    """The ImageNet transform of one ``uint8`` image ``[3, H, W]`` -> normalized ``float32``
    ``[3, image_size, image_size]``: training (RandomResizedCrop + flip, then timm's
    RandAugment when ``rand_augment`` is set, normalization, then timm's random erasing with
    probability ``random_erasing``; all drawn from ``rng``) or evaluation
    (Resize(eval_resize) + CenterCrop).

    Raises:
        ValueError: ``rand_augment``/``random_erasing`` on an evaluation transform, or
            invalid (see :func:`timm_augmentations`).
    """

    image_size: int = 224
    eval_resize: int = 256
    train: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    rand_augment: str = ""
    random_erasing: float = 0.0
    _mean: torch.Tensor = field(init=False, repr=False, compare=False)
    _std: torch.Tensor = field(init=False, repr=False, compare=False)
    _augment: Any = field(init=False, repr=False, compare=False)
    _erase: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.train and (self.rand_augment or self.random_erasing):
            raise ValueError("RandAugment and random erasing are training augmentations")
        augment, erase = timm_augmentations(self.image_size, self.rand_augment, self.random_erasing)
        object.__setattr__(self, "_augment", augment)
        object.__setattr__(self, "_erase", erase)
        object.__setattr__(self, "_mean", torch.tensor(self.mean).view(3, 1, 1))
        object.__setattr__(self, "_std", torch.tensor(self.std).view(3, 1, 1))

    def __call__(self, image: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        size = self.image_size
        if self.train:
            image = self.crop_and_flip(image, rng)
            if self._augment is not None or self._erase is not None:
                with _global_rngs_seeded_from(rng):
                    if self._augment is not None:
                        image = F.pil_to_tensor(self._augment(F.to_pil_image(image)))
                    out = self.normalize(image)
                    return out if self._erase is None else self._erase(out)
        else:
            image = F.resize(image, [self.eval_resize], antialias=True)
            image = F.center_crop(image, [size, size])
        return self.normalize(image)

    def crop_and_flip(self, image: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
        """The training RandomResizedCrop to ``image_size`` and the horizontal flip, drawn
        from ``rng`` (``uint8`` in, ``uint8`` out)."""
        if rng is None:
            raise ValueError("the training transform needs a generator")
        size = self.image_size
        draws = rng.random(_CROP_DRAWS).tolist()
        top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], draws)
        image = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        return F.horizontal_flip(image) if draws[40] < 0.5 else image

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """``uint8`` ``[3, H, W]`` -> ``float32`` in [0, 1], normalized by mean and std."""
        return normalize_image(image, self._mean, self._std)


# ---------------------------------------------------------------------------------------
# Datasets


class ImageFolderDataset(StreamingDataset):
    """One split of an image folder: ``dataset[key]`` is ``(image [3, S, S] float32, label)``
    (``key`` and the per-sample seeding: :class:`~ndkd.data.streaming.StreamingDataset`)."""

    def __init__(self, files: _FileList, transform: ImageTransform, seed: int = 0):
        super().__init__(transform, seed)
        self.files = files

    @property
    def classes(self) -> list[str]:
        return list(self.files.classes)

    @property
    def num_classes(self) -> int:
        return len(self.files.classes)

    @property
    def labels(self) -> torch.Tensor:
        """Every sample's label, ``int64`` ``[N]`` (shares the listing's memory)."""
        return torch.from_numpy(self.files.labels)

    def __len__(self) -> int:
        return len(self.files)

    def _file(self, index: int) -> str:
        return self.files.path(index)

    def _target(self, index: int) -> int:
        return int(self.files.labels[index])


@dataclass
class ImageFolderSplits:
    """Both splits of an image folder; ``classes`` is the shared, sorted class list."""

    root: Path
    classes: list[str]
    train: ImageFolderDataset
    val: ImageFolderDataset

    @property
    def test(self) -> ImageFolderDataset:
        """The evaluation split (``val/``), named as in :class:`ndkd.data.Splits`."""
        return self.val

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3

    def train_without_augmentation(self) -> ImageFolderDataset:
        """The training images under the evaluation transform (class means)."""
        return self.train.with_transform(self.val.transform)

    def describe(self, name: str = "imagefolder") -> dict[str, Any]:
        """Class count and list and split sizes (stored in the run folder); for a folder
        that looks like ImageNet-1k (1000 WordNet-id classes) also its standard sizes and
        ``standard_size``."""
        facts: dict[str, Any] = {
            "name": name,
            "num_classes": self.num_classes,
            "train_samples": len(self.train),
            "test_samples": len(self.val),
            "classes": list(self.classes),
        }
        if self.num_classes == 1000 and all(_WNID.fullmatch(c) for c in self.classes):
            facts["standard_train_samples"] = IMAGENET_TRAIN_SAMPLES
            facts["standard_test_samples"] = IMAGENET_VAL_SAMPLES
            facts["standard_size"] = (len(self.train), len(self.val)) == (
                IMAGENET_TRAIN_SAMPLES,
                IMAGENET_VAL_SAMPLES,
            )
        return facts


def read_image_folders(
    root: str | os.PathLike[str],
    image_size: int = 224,
    eval_resize: int = 256,
    *,
    rand_augment: str = "",
    random_erasing: float = 0.0,
) -> ImageFolderSplits:
    """List ``root/train`` and ``root/val`` (one sub-folder per class) and build both splits.

    Hidden entries are skipped; files whose extension is not in :data:`IMAGE_EXTENSIONS`
    (any case) are ignored. Images are only opened when loaded. ``rand_augment`` (a timm
    RandAugment policy, e.g. ``rand-m9-mstd0.5-inc1``) and ``random_erasing`` (a
    probability) add timm's augmentations to the training transform (see
    :class:`ImageTransform`); both are off by default.

    Raises:
        FileNotFoundError: ``root``, ``root/train`` or ``root/val`` is not a folder.
        ValueError: no class folders; a class folder in one split only; a class folder
            without images; a size below 1; an invalid RandAugment policy or erasing
            probability, or either asked without timm installed.
    """
    if image_size < 1 or eval_resize < 1:
        raise ValueError(
            f"image_size and eval_resize must be positive, got {image_size} and {eval_resize}"
        )
    train = ImageTransform(
        image_size,
        eval_resize,
        train=True,
        rand_augment=rand_augment,
        random_erasing=random_erasing,
    )
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {str(root)!r} is not a folder")
    for split in _SPLITS:
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"{root / split} is missing: an image folder holds train/ and val/, each with "
                "one sub-folder of images per class"
            )
    start = time.perf_counter()
    train_classes, val_classes = (_class_folders(root / split) for split in _SPLITS)
    if not train_classes and not val_classes:
        raise ValueError(f"no class folders in {root / 'train'} or {root / 'val'}")
    for split, classes in zip(_SPLITS, (train_classes, val_classes)):
        if not classes:
            raise ValueError(
                f"{root / split} holds no class folders (one sub-folder of images per class "
                "is expected; a flat ImageNet val/ must first be sorted into class folders, "
                "e.g. with the usual valprep.sh)"
            )
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        parts = [
            f"only in {root / 'train'}: {_shown(only_train)}" if only_train else "",
            f"only in {root / 'val'}: {_shown(only_val)}" if only_val else "",
        ]
        raise ValueError(
            "train/ and val/ must hold the same class folders; " + "; ".join(p for p in parts if p)
        )
    train_files = _list_split(root / "train", train_classes)
    val_files = _list_split(root / "val", val_classes)
    logger.info(
        "%s: %d classes, %d training and %d validation images listed in %.2f s",
        root,
        len(train_classes),
        len(train_files),
        len(val_files),
        time.perf_counter() - start,
    )
    evaluation = replace(train, train=False, rand_augment="", random_erasing=0.0)
    return ImageFolderSplits(
        root,
        train_classes,
        ImageFolderDataset(train_files, train),
        ImageFolderDataset(val_files, evaluation),
    )
