"""Image folders in the ImageNet layout: ``root/{train,val}/<class>/<image>``.

Reading: the file list is built with ``os.scandir`` (no per-file ``stat``) and kept in NumPy
arrays (one byte buffer of names, offsets and labels), so worker processes share it without
copy-on-write growth. Classes are the sorted folder names, the same for both splits.

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
seeded with ``(seed, e, i)``, so they depend on nothing else (worker count, the worker a
sample lands on, where a run resumed). The loaders pass the epoch with each index
(:class:`~ndkd.data.sampling.EpochShardSampler`), which lets the training workers persist.
Copy ``c > 0`` of a sample under repeated augmentation is seeded with ``(seed, e, i, c)``.
timm's augmentations draw from Python's, NumPy's and torch's global generators: around
them these are seeded from the same per-sample generator (after the crop's draws) and
restored afterwards, so the samples stay deterministic and the caller's global random
state is left as it was.

Unreadable or corrupt images are refused: loading one raises ``ValueError`` naming the file
(silently replacing samples would change the data a run reports on).
"""

from __future__ import annotations

import logging
import math
import operator
import os
import random
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as F

from ndkd.data.sampling import EpochShardSampler, check_shard

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"})
"""File extensions read as images (compared lower-cased)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    """The images of one split: names in one ``uint8`` buffer, ``[start, end)`` offsets and
    labels in NumPy arrays (no per-file Python objects)."""

    folder: str
    classes: tuple[str, ...]
    names: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        name = os.fsdecode(self.names[self.starts[index] : self.ends[index]].tobytes())
        return os.path.join(self.folder, self.classes[self.labels[index]], name)


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
    joined = os.fsencode("\0".join("\0".join(images) for images in per_class))
    buffer = np.frombuffer(joined, dtype=np.uint8)
    separators = np.flatnonzero(buffer == 0)
    starts = np.concatenate([[0], separators + 1]).astype(np.int64)
    ends = np.concatenate([separators, [len(buffer)]]).astype(np.int64)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return _FileList(str(split), tuple(classes), buffer, starts, ends, labels)


# ---------------------------------------------------------------------------------------
# Decoding and transforms


def _jpeg_decoder() -> Any:
    try:  # deprecated since torchvision 0.29 (TorchCodec takes over); Pillow is the fallback
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    return lambda data: decode_jpeg(data, mode=ImageReadMode.RGB)


_DECODE_JPEG = _jpeg_decoder()
_JPEG_SUFFIXES = (".jpg", ".jpeg")


def decode_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode ``path`` into an RGB ``uint8`` tensor ``[3, H, W]`` (a channels-last view, as
    ``v2.PILToTensor`` gives). ``.jpg``/``.jpeg`` files go to ``torchvision.io.decode_jpeg``
    (libjpeg-turbo, the same pixels as Pillow, faster); other formats, and files it
    rejects (e.g. a PNG named ``.JPEG``), to Pillow.

    Raises:
        ValueError: the file cannot be read or decoded (names the file).
    """
    path = os.fspath(path)
    with warnings.catch_warnings():  # torchvision's deprecation notice; read-only buffers
        warnings.simplefilter("ignore")
        if _DECODE_JPEG is not None and path.lower().endswith(_JPEG_SUFFIXES):
            try:
                with open(path, "rb") as file:
                    return _DECODE_JPEG(torch.frombuffer(file.read(), dtype=torch.uint8))
            except (OSError, RuntimeError, ValueError):
                pass  # Pillow decides (and names the file if it cannot read it either)
        try:
            with Image.open(path) as opened:
                rgb = opened if opened.mode == "RGB" else opened.convert("RGB")
                pixels = np.asarray(rgb)
        except Exception as error:  # Pillow raises many types for broken files
            raise ValueError(f"cannot read image {path}: {error}") from error
        return torch.from_numpy(pixels).permute(2, 0, 1)  # never written: transforms copy


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
            if rng is None:
                raise ValueError("the training transform needs a generator")
            draws = rng.random(_CROP_DRAWS).tolist()
            top, left, h, w = random_resized_crop_box(image.shape[-2], image.shape[-1], draws)
            image = F.resized_crop(image, top, left, h, w, [size, size], antialias=True)
            if draws[40] < 0.5:
                image = F.horizontal_flip(image)
            if self._augment is not None or self._erase is not None:
                with _global_rngs_seeded_from(rng):
                    if self._augment is not None:
                        image = F.pil_to_tensor(self._augment(F.to_pil_image(image)))
                    out = self._normalize(image)
                    return out if self._erase is None else self._erase(out)
        else:
            image = F.resize(image, [self.eval_resize], antialias=True)
            image = F.center_crop(image, [size, size])
        return self._normalize(image)

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        # v2.ToDtype(float32, scale=True) + v2.Normalize, the same operations in order.
        size = self.image_size
        out = torch.empty((3, size, size), dtype=torch.float32).copy_(image)
        return out.mul_(1.0 / 255).sub_(self._mean).div_(self._std)


# ---------------------------------------------------------------------------------------
# Datasets


class ImageFolderDataset(Dataset[tuple[torch.Tensor, int]]):
    """One split of an image folder: ``dataset[key]`` is ``(image [3, S, S] float32, label)``.

    ``key`` is an index, ``(index, epoch)`` or ``(index, epoch, copy)`` (what the loaders
    pass; ``copy``: the repeated-augmentation copy, default 0). With the training transform
    the augmentation of ``(index, epoch)`` is seeded by ``(seed, epoch, index)`` only, that
    of copy ``c > 0`` by ``(seed, epoch, index, c)``; a bare index uses the epoch of
    :meth:`set_epoch`.
    """

    def __init__(self, files: _FileList, transform: ImageTransform, seed: int = 0):
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.files = files
        self.transform = transform
        self.seed = seed
        self.epoch = 0

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

    def set_epoch(self, epoch: int) -> None:
        """The epoch used by bare-index access (the loaders pass it with each index)."""
        self.epoch = epoch

    def path(self, index: int) -> Path:
        """The image file of sample ``index``."""
        return Path(self.files.path(self._check(index)))

    def with_transform(self, transform: ImageTransform) -> ImageFolderDataset:
        """The same images (shared listing) under ``transform``."""
        return ImageFolderDataset(self.files, transform, self.seed)

    def with_seed(self, seed: int) -> ImageFolderDataset:
        """The same images and transform with augmentation seed ``seed``."""
        return ImageFolderDataset(self.files, self.transform, seed)

    def _check(self, index: int) -> int:
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return index

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, int]:
        index, epoch, copy = (*key, 0)[:3] if isinstance(key, tuple) else (key, self.epoch, 0)
        index = self._check(index)
        if copy < 0:
            raise ValueError(f"copy must be non-negative, got {copy}")
        image = decode_image(self.files.path(index))
        rng = None
        if self.transform.train:
            entropy = [self.seed, epoch, index] + ([copy] if copy else [])
            rng = np.random.default_rng(entropy)
        return self.transform(image, rng), int(self.files.labels[index])


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


# ---------------------------------------------------------------------------------------
# Loaders


class _WithIndices(Dataset[tuple[torch.Tensor, int, int]]):
    """``dataset[key] + (index,)``."""

    def __init__(self, dataset: ImageFolderDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, int, int]:
        index = key[0] if isinstance(key, tuple) else key
        return (*self.dataset[key], index)


def _data_loader(
    dataset: ImageFolderDataset,
    batch_size: int,
    sampler: Any,
    *,
    num_workers: int,
    drop_last: bool,
    return_indices: bool,
    pin_memory: bool | None,
    persistent: bool,
) -> DataLoader:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    workers = num_workers > 0
    return DataLoader(
        _WithIndices(dataset) if return_indices else dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=persistent and workers,
        prefetch_factor=2 if workers else None,
        # Its own generator: iterating never draws from the global RNG.
        generator=torch.Generator(),
    )


class TrainLoader:
    """Shuffled, rank-sharded, resumable training batches of an :class:`ImageFolderDataset`.

    Yields ``(images [B, 3, S, S] float32, labels [B] int64)``, plus ``dataset_indices [B]``
    with ``return_indices``. The order of epoch ``e`` is ``DistributedSampler``'s (seed
    ``seed + e``, padded by wrap-around, ``rank::world_size``); the augmentation of a sample
    depends only on ``(seed, e, index)``. Workers persist across epochs: the epoch is sent
    with every index.

    ``repeated_augmentations=K > 1``: repeated augmentation (DeiT, timm's
    ``RepeatAugSampler`` with ``selected_round=0``): each sample of the epoch order ``K``
    times, the copies spread over the ranks and augmented differently (copy ``c`` seeded by
    ``(seed, e, index, c)``); still ``ceil(N / world_size)`` samples per rank and epoch, so
    about ``N / K`` distinct samples an epoch. ``0`` or ``1``: off.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        drop_last: bool = False,
        return_indices: bool = False,
        pin_memory: bool | None = None,
        repeated_augmentations: int = 0,
    ):
        if repeated_augmentations < 0:
            raise ValueError(
                f"repeated_augmentations must be non-negative, got {repeated_augmentations}"
            )
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = EpochShardSampler(
            len(dataset),
            seed=seed,
            rank=rank,
            world_size=world_size,
            repeats=max(1, repeated_augmentations),
        )
        self.loader = _data_loader(
            dataset.with_seed(seed),
            batch_size,
            self.sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            return_indices=return_indices,
            pin_memory=pin_memory,
            persistent=True,
        )

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the order and augmentation of ``epoch`` for the next iteration."""
        self.sampler.set_epoch(epoch)

    def start_at(self, step: int) -> None:
        """Make the next iteration skip its first ``step`` batches without loading them (to
        resume mid-epoch); later iterations start at batch 0."""
        if not 0 <= step <= len(self):
            raise ValueError(f"step must be in [0, {len(self)}], got {step}")
        self.sampler.skip(step * self.batch_size)

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        samples = self.sampler.num_samples
        if self.drop_last:
            return samples // self.batch_size
        return math.ceil(samples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return iter(self.loader)


def eval_loader(
    dataset: ImageFolderDataset,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    return_indices: bool = False,
    pin_memory: bool | None = None,
) -> DataLoader:
    """Batches ``(images, labels)`` (``+ dataset_indices`` with ``return_indices``) of this
    rank's share of ``dataset``, in dataset order: indices ``rank::world_size``, no padding,
    so over all ranks every sample is seen exactly once (a rank may get one batch fewer
    or none). Workers do not persist."""
    check_shard(rank, world_size)
    return _data_loader(
        dataset,
        batch_size,
        range(rank, len(dataset), world_size),
        num_workers=num_workers,
        drop_last=False,
        return_indices=return_indices,
        pin_memory=pin_memory,
        persistent=False,
    )
