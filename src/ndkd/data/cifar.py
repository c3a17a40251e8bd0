"""CIFAR-10 / CIFAR-100 from the standard "python version" pickle files.

Expected layout under ``root`` (as distributed at https://www.cs.toronto.edu/~kriz/cifar.html):

- CIFAR-10: ``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5`` and ``test_batch``,
  or the archive ``cifar-10-python.tar.gz`` holding that folder;
- CIFAR-100: ``cifar-100-python/train`` and ``test``, or ``cifar-100-python.tar.gz``.

``root`` may also be the folder itself. Each file is a pickled dict with ``data``, a
``uint8`` array ``[N, 3072]`` (per image: the 1024 red values in row-major order, then
green, then blue) and the labels (``labels`` for CIFAR-10, ``fine_labels`` for CIFAR-100).
Files are unpickled with a restricted unpickler that only builds NumPy arrays.

Any number of images is read (subsets and data of one's own in the CIFAR format); a split
whose size differs from the standard one (:func:`standard_size`) is logged as a warning.
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

IMAGE_SHAPE = (3, 32, 32)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR variant's files live and what they must contain."""

    folder: str
    archive: str
    files: dict[str, tuple[str, ...]]
    counts: dict[str, int]  # the standard number of images of each split
    label_key: str
    num_classes: int

    def layout(self, root: Path) -> str:
        """Human-readable description of the expected files, for error messages."""
        names = ", ".join(name for split in SPLITS for name in self.files[split])
        return (
            f"expected the standard python-pickle layout: {root / self.folder}/{{{names}}}, "
            f"or the archive {root / self.archive}"
        )


SPECS = {
    "cifar10": CifarSpec(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        counts={"train": 50000, "test": 10000},
        label_key="labels",
        num_classes=10,
    ),
    "cifar100": CifarSpec(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        files={"train": ("train",), "test": ("test",)},
        counts={"train": 50000, "test": 10000},
        label_key="fine_labels",
        num_classes=100,
    ),
}


def standard_size(name: str, split: str) -> int:
    """The number of images in the standard ``split`` of CIFAR variant ``name``.

    Raises:
        ValueError: unknown ``name`` or ``split``.
    """
    _check_name(name, split)
    return SPECS[name].counts[split]


def _check_name(name: str, split: str) -> None:
    if name not in SPECS:
        raise ValueError(f"unknown CIFAR variant {name!r}; expected one of {sorted(SPECS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {name}; expected one of {SPLITS}")


def read_cifar(
    name: str, root: str | os.PathLike[str], split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a CIFAR split into ``(images, labels)``.

    Returns:
        ``images``: ``uint8`` tensor ``[N, 3, 32, 32]`` (RGB, the files' channel order);
        ``labels``: ``int64`` tensor ``[N]``.

    Any number of images is accepted; a count other than :func:`standard_size` is logged
    as a warning.

    Raises:
        FileNotFoundError: neither the folder files nor the archive exist (names the paths
            and the expected layout).
        ValueError: unknown ``name``/``split``, or a file is truncated, corrupt, holds no
            images, rows of the wrong length or out-of-range labels (names the file,
            expected vs found).
    """
    _check_name(name, split)
    spec, root = SPECS[name], Path(root)
    files = _read_files(spec, root, split)
    chunks = [_check_batch(spec, path, payload, split) for path, payload in files]
    # one file (CIFAR-100): no concatenated copy of 150 MB (its page faults cost ~0.3 s)
    images = chunks[0][0] if len(chunks) == 1 else np.concatenate([c[0] for c in chunks])
    labels = chunks[0][1] if len(chunks) == 1 else np.concatenate([c[1] for c in chunks])
    expected = spec.counts[split]
    if len(images) != expected:
        logger.warning(
            "%s %s split at %s: %d images, not the standard %d (a subset or other data "
            "in the CIFAR format)",
            name,
            split,
            ", ".join(path for path, _ in files),
            len(images),
            expected,
        )
    logger.debug("read %d %s %s images from %s", len(images), name, split, root)
    return torch.from_numpy(images.reshape(-1, *IMAGE_SHAPE)), torch.from_numpy(labels)


def _read_files(spec: CifarSpec, root: Path, split: str) -> list[tuple[str, bytes]]:
    """The raw bytes of each file of ``split``, each labelled with its path."""
    names = spec.files[split]
    for folder in (root / spec.folder, root):
        if folder.name == spec.folder and all((folder / f).is_file() for f in names):
            return [(str(folder / f), (folder / f).read_bytes()) for f in names]
    archive = root / spec.archive
    if not archive.is_file():
        missing = next(
            root / spec.folder / f for f in names if not (root / spec.folder / f).is_file()
        )
        raise FileNotFoundError(f"missing CIFAR file {missing}; {spec.layout(root)}")
    wanted = {f"{spec.folder}/{f}" for f in names}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.name in wanted else None
                if handle is not None:
                    found[member.name] = handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ValueError(
            f"cannot read archive {archive} (truncated or corrupt): {error}"
        ) from error
    absent = sorted(wanted - found.keys())
    if absent:
        raise ValueError(f"archive {archive} lacks {', '.join(absent)}; {spec.layout(root)}")
    return [(f"{archive}:{spec.folder}/{f}", found[f"{spec.folder}/{f}"]) for f in names]


def _check_batch(
    spec: CifarSpec, path: str, payload: bytes, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one batch file and validate its arrays."""
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except Exception as error:  # any unpickling failure means a bad file
        raise ValueError(f"cannot unpickle {path} (truncated or corrupt): {error!r}") from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for key in ("data", spec.label_key):
        if key not in batch:
            raise ValueError(f"{path}: expected key {key!r}, found keys {sorted(batch)}")
    data = np.asarray(batch["data"])
    pixels = int(np.prod(IMAGE_SHAPE))
    if data.size == 0:
        raise ValueError(
            f"{path}: empty {split} split file: 'data' holds no images; expected uint8 "
            f"[N, {pixels}] with N >= 1"
        )
    try:
        labels = np.asarray(batch[spec.label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(
            f"{path}: expected {spec.label_key!r} as a list of integers ({error})"
        ) from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise ValueError(
            f"{path}: expected 'data' as uint8 [N, {pixels}], found {data.dtype} {list(data.shape)}"
        )
    if labels.shape != (len(data),):
        raise ValueError(
            f"{path}: expected {len(data)} labels under {spec.label_key!r}, found "
            f"{list(labels.shape)}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise ValueError(
            f"{path}: expected labels in [0, {spec.num_classes}), found "
            f"[{labels.min()}, {labels.max()}]"
        )
    return data, labels


# The functions NumPy pickles arrays with: protocols <= 4 (the CIFAR files) and protocol 5.
# Their module moved from numpy.core to numpy._core in NumPy 2; both names are accepted.
_RECONSTRUCT = np.zeros(0).__reduce_ex__(2)[0]
_FROMBUFFER = np.zeros(0).__reduce_ex__(5)[0]
_CORES = ("numpy.core", "numpy._core")


def _empty_bytes(*args: Any) -> bytes:
    """``bytes()``: how protocol-2 pickles written by Python 3 spell ``b""`` (the buffer of an
    empty array). Any argument is refused (``bytes(n)`` would allocate n bytes)."""
    if args:
        raise pickle.UnpicklingError("refusing bytes(...) with arguments in a CIFAR file")
    return b""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild NumPy arrays and nothing else (no arbitrary code)."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
        **{(module, "bytes"): _empty_bytes for module in ("builtins", "__builtin__")},
        **{(f"{core}.multiarray", "_reconstruct"): _RECONSTRUCT for core in _CORES},
        **{(f"{core}.numeric", "_frombuffer"): _FROMBUFFER for core in _CORES},
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        return self._ALLOWED[(module, name)]
