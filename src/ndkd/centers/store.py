"""Teacher class means with their metadata: validation, safe save and load."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ndkd.atomic import atomic_write

log = logging.getLogger(__name__)

FORMAT_TAG = "ndkd.class_means/1"
SUFFIXES = (".safetensors", ".json")
# Metadata that class_means records and that must agree with the tensors when present.
_SIZES = ("num_classes", "feature_dim", "num_samples")
# Metadata that describes where a loaded file came from, not the means themselves.
_ORIGIN = ("path", "source")


@dataclass
class ClassMeans:
    """Per-class mean of a teacher's embeddings.

    Attributes:
        means: ``[C, D]`` float32 class means.
        counts: ``[C]`` int64 number of samples averaged per class, or ``None`` when unknown
            (e.g. imported from the public JSON files).
        metadata: free-form string facts (teacher, dataset, split, transform, ...).
    """

    means: torch.Tensor
    counts: torch.Tensor | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def validate(self, source: str = "class means") -> ClassMeans:
        """Raise ``ValueError`` unless the means are a finite ``[C, D]`` matrix, every class
        has samples and a non-zero mean (its direction is what the ND loss uses)."""
        if self.means.dim() != 2 or self.means.shape[0] < 1 or self.means.shape[1] < 1:
            raise ValueError(
                f"{source}: expected a [classes, dim] matrix, found shape {tuple(self.means.shape)}"
            )
        if not torch.is_floating_point(self.means):
            raise ValueError(f"{source}: expected floating-point means, found {self.means.dtype}")
        bad_rows = (~torch.isfinite(self.means)).any(dim=1).nonzero().flatten().tolist()
        if bad_rows:
            raise ValueError(
                f"{source}: non-finite values in the means of classes {_first(bad_rows)}"
            )
        if self.counts is not None:
            if self.counts.shape != (self.num_classes,):
                raise ValueError(
                    f"{source}: counts shape {tuple(self.counts.shape)} does not "
                    f"match {self.num_classes} classes"
                )
            empty = (self.counts <= 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(
                    f"{source}: {len(empty)} of {self.num_classes} classes have no "
                    f"samples: {_first(empty)}; the loader must cover every class"
                )
        zero = (torch.linalg.vector_norm(self.means.double(), dim=1) == 0).nonzero()
        if zero.numel():
            raise ValueError(
                f"{source}: classes {_first(zero.flatten().tolist())} have an "
                "all-zero mean, whose direction is undefined"
            )
        return self

    def check_compatible(
        self, num_classes: int | None = None, dim: int | None = None, what: str = "the model"
    ) -> ClassMeans:
        """Raise ``ValueError`` when the class count or dim does not fit ``what``."""
        origin = self.metadata.get("path", "class means")
        if num_classes is not None and num_classes != self.num_classes:
            raise ValueError(
                f"{origin}: has {self.num_classes} classes but {what} has {num_classes}"
            )
        if dim is not None and dim != self.dim:
            raise ValueError(f"{origin}: has dim {self.dim} but {what} has embedding dim {dim}")
        return self

    def to(self, device: torch.device | str) -> torch.Tensor:
        """The ``[C, D]`` means on ``device`` (what ``nd_loss`` takes)."""
        return self.means.to(device)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the means atomically, in the format named by the suffix of ``path``.

        ``.safetensors``: tensors ``means``/``counts`` and string metadata (everything kept).
        ``.json``: the public layout ``{"0": [D floats], ..., "C-1": [...]}`` read by
        :func:`~ndkd.centers.official.load_official_json`; counts and metadata have no place
        in it and are dropped (with a warning).

        Raises:
            ValueError: ``path`` is a folder, or its suffix is neither of the above.
        """
        path = check_output_path(path)
        self.validate(str(path))
        if path.suffix.lower() == ".json":
            return self._save_json(path)
        tensors = {"means": self.means.detach().float().cpu().contiguous()}
        if self.counts is not None:
            tensors["counts"] = self.counts.detach().long().cpu().contiguous()
        facts = {str(key): str(value) for key, value in self.metadata.items()}
        meta = {"format": FORMAT_TAG, "metadata": json.dumps(facts, sort_keys=True)}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def _save_json(self, path: Path) -> Path:
        dropped = [key for key in sorted(self.metadata) if key not in _ORIGIN]
        if self.counts is not None:
            dropped.insert(0, "per-class sample counts")
        if dropped:
            log.warning(
                "%s: the public JSON layout holds only the means; not kept: %s "
                "(write a .safetensors file to keep them)",
                path,
                ", ".join(dropped),
            )
        rows = self.means.detach().float().cpu().tolist()
        payload = {str(k): row for k, row in enumerate(rows)}
        text = json.dumps(payload)
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        num_classes: int | None = None,
        dim: int | None = None,
    ) -> ClassMeans:
        """Load a file written by :meth:`save`, or a public ``center_emb_train.json``.

        Validates the contents, and the class count and dim when given.
        """
        path = Path(path)
        if path.suffix.lower() == ".json":
            from ndkd.centers.official import load_official_json

            loaded = load_official_json(path)
        else:
            loaded = cls._load_safetensors(path)
        return loaded.check_compatible(num_classes, dim)

    @classmethod
    def _load_safetensors(cls, path: Path) -> ClassMeans:
        if path.is_dir():
            raise ValueError(f"{path} is a folder; expected a class-means file")
        if not path.is_file():
            raise FileNotFoundError(f"class-means file not found: {path}")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(
                f"{path}: not a readable safetensors class-means file ({error})"
            ) from error
        if header.get("format") != FORMAT_TAG or "means" not in tensors:
            raise ValueError(
                f"{path}: not an ndkd class-means file (format tag "
                f"{header.get('format')!r}, expected {FORMAT_TAG!r})"
            )
        counts = tensors.get("counts")
        if counts is not None and (counts.is_floating_point() or counts.is_complex()):
            raise ValueError(f"{path}: 'counts' must be integers, found {counts.dtype}")
        metadata = _read_metadata(header.get("metadata", "{}"), path)
        means = cls(tensors["means"].float(), counts, metadata).validate(str(path))
        _check_sizes(means, path)
        metadata["path"] = str(path)
        return means


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` if a class-means file may be written there.

    Raises:
        ValueError: ``path`` is an existing folder, or its suffix is not ``.safetensors``
            or ``.json``.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; expected a file path")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(
            f"{path}: cannot tell the class-means format from the suffix "
            f"{path.suffix or '(none)'!r}; expected {' or '.join(SUFFIXES)}"
        )
    return path


def convert_centers(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> ClassMeans:
    """Read class means from ``src`` and write them to ``dst``, each in the format named by
    its suffix (``.json``: the public layout; ``.safetensors``: ndkd's), adding ``metadata``.

    Returns:
        The means written (their ``metadata`` without the source path).

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: ``dst`` is ``src`` itself (it would overwrite its input), a folder, or has
            an unknown suffix; ``src`` is unreadable (see :meth:`ClassMeans.load`).
    """
    src, dst = Path(src), check_output_path(dst)
    if src.exists() and _same_file(src, dst):
        raise ValueError(f"{dst} is the input file {src}; writing it would overwrite its input")
    means = ClassMeans.load(src)
    means.metadata.pop("path", None)
    means.metadata.update(metadata or {})
    means.save(dst)
    log.info("converted %s to %s: %d classes x %d dims", src, dst, means.num_classes, means.dim)
    return means


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _read_metadata(text: str, path: Path) -> dict[str, str]:
    """The JSON object of string facts stored in a class-means file's header."""
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: metadata is not valid JSON ({error.msg})") from None
    if not isinstance(metadata, dict):
        raise ValueError(
            f"{path}: metadata must be a JSON object of strings, found {type(metadata).__name__}"
        )
    bad = sorted(key for key, value in metadata.items() if not isinstance(value, str))
    if bad:
        raise ValueError(f"{path}: metadata values must be strings; not so for {bad[:10]}")
    return metadata


def _check_sizes(means: ClassMeans, path: Path) -> None:
    """Metadata sizes recorded by :func:`class_means` must agree with the tensors."""
    actual = {"num_classes": means.num_classes, "feature_dim": means.dim}
    if means.counts is not None:
        actual["num_samples"] = int(means.counts.sum())
    for key in _SIZES:
        if key not in means.metadata:
            continue
        text = means.metadata[key]
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"{path}: metadata {key!r} must be an integer, found {text!r}"
            ) from None
        if key in actual and value != actual[key]:
            raise ValueError(
                f"{path}: metadata {key!r} is {value} but the stored tensors have {actual[key]}"
            )


def _first(items: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
