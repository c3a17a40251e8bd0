"""Teacher class means with their metadata: validation, safe save and load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ndkd.atomic import atomic_write

FORMAT_TAG = "ndkd.class_means/1"


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
        """Write a safetensors file atomically (tensors ``means``/``counts``, string metadata)."""
        self.validate(str(path))
        tensors = {"means": self.means.detach().float().cpu().contiguous()}
        if self.counts is not None:
            tensors["counts"] = self.counts.detach().long().cpu().contiguous()
        meta = {"format": FORMAT_TAG, "metadata": json.dumps(self.metadata, sort_keys=True)}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

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
        metadata = json.loads(header.get("metadata", "{}"))
        metadata["path"] = str(path)
        return cls(tensors["means"].float(), tensors.get("counts"), metadata).validate(str(path))


def _first(items: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
