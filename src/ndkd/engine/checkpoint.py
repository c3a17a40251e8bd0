"""Training checkpoints: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ndkd.atomic import atomic_write
from ndkd.models.checkpoint import read_torch_file


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` through a temporary file and a rename: a crash at any
    moment leaves either the previous checkpoint or the new one, never a torn file."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty, truncated, corrupt, holds Python objects, or is not a
            dict; one line naming the file (see :func:`ndkd.models.checkpoint.read_torch_file`).
    """
    path = Path(path)
    state = read_torch_file(path, "run checkpoint")
    if not isinstance(state, dict):
        raise ValueError(
            f"run checkpoint {path}: holds a {type(state).__name__}, not the dict that "
            "ndkd train writes"
        )
    return state


def rng_state() -> dict[str, Any]:
    """Every random generator the loop draws from, as plain data and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
