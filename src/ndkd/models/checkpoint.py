"""Load state dicts in the public CIFAR-100 checkpoint layout (and common wrappers of it)."""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Top-level keys under which training scripts store the weights ({"model": sd, "epoch": ...}).
_CONTAINER_KEYS = ("model", "state_dict")
# Prefixes added by nn.DataParallel / DistributedDataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 10


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a model; the message lists the offending keys."""


_CORRUPT = "not a PyTorch checkpoint (truncated or corrupt)"
_BLOCKED = (
    "holds Python objects that ndkd will not unpickle (only tensors and plain data are loaded)"
)
# torch names a refused class as "GLOBAL module.Name was not an allowed global".
_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


def read_torch_file(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one-line errors.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder, empty, unreadable, not a PyTorch file, or holds
            objects other than tensors and plain data. The message reads
            ``"{what} {path}: {problem}"`` and never repeats torch's own text (which advises
            unpickling with ``weights_only=False``).
    """
    path = Path(path)
    where = f"{what} {path}"
    if path.is_dir():
        raise ValueError(f"{where}: is a folder; expected a file written by torch.save")
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, "rb") as handle:
            empty = not handle.read(1)
    except OSError as error:
        raise ValueError(f"{where}: cannot read ({error.strerror or error})") from None
    if empty:
        raise ValueError(f"{where}: empty file")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it was not written with; the error says more.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as error:
        found = _GLOBAL.search(str(error))
        if found:
            raise ValueError(f"{where}: {_BLOCKED}; found {found.group(1)}") from None
        raise ValueError(f"{where}: {_CORRUPT}") from None
    except Exception:  # torch raises many types (RuntimeError, OSError, EOFError, KeyError...)
        raise ValueError(f"{where}: {_CORRUPT}") from None


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the bare state dict held by ``checkpoint``.

    Accepts ``{"model": sd, ...}``, ``{"state_dict": sd, ...}`` or ``sd`` itself, and removes
    ``module.`` / ``_orig_mod.`` prefixes left by data-parallel wrappers and ``torch.compile``.

    Raises:
        ValueError: no mapping of tensors is found.
    """
    state = checkpoint
    for key in _CONTAINER_KEYS:
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            "no state dict found: expected a mapping of tensors, or one stored under "
            f"{' or '.join(repr(k) for k in _CONTAINER_KEYS)}; top-level keys are "
            f"{_preview(list(checkpoint))}"
        )
    return {_strip_prefixes(name): tensor for name, tensor in state.items()}


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    strict: bool = True,
) -> nn.Module:
    """Load ``source`` (a file written by ``torch.save`` or an in-memory checkpoint) into ``model``.

    The file is read with ``weights_only=True`` onto the CPU. Keys must match exactly when
    ``strict`` (missing ``num_batches_tracked`` buffers, absent from very old checkpoints, are
    tolerated); shapes must always match.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        ValueError: the file cannot be read as a weights-only PyTorch checkpoint, or holds
            no state dict (the message names the file; see :func:`read_torch_file`).
        CheckpointMismatchError: missing, unexpected or mis-shaped keys; all are listed,
            after the file's path.
    """
    if isinstance(source, Mapping):
        where = "checkpoint"
        state = extract_state_dict(source)
    else:
        where = f"checkpoint {Path(source)}"
        checkpoint = read_torch_file(source)
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"{where} holds a {type(checkpoint).__name__}, not a state dict")
        try:
            state = extract_state_dict(checkpoint)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    expected = model.state_dict()
    for name in expected.keys() - state.keys():
        if name.endswith(".num_batches_tracked"):
            state[name] = expected[name]
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshaped = [
        f"{name} (checkpoint {list(state[name].shape)}, model {list(expected[name].shape)})"
        for name in sorted(expected.keys() & state.keys())
        if state[name].shape != expected[name].shape
    ]
    problems = [("mis-shaped", misshaped)]
    if strict:
        problems += [("missing", missing), ("unexpected", unexpected)]
    found = [f"{len(keys)} {kind}: {_preview(keys)}" for kind, keys in problems if keys]
    if found:
        raise CheckpointMismatchError(
            f"{where} does not match {type(model).__name__}: " + "; ".join(found)
        )
    if missing or unexpected:
        logger.warning(
            "loading %s non-strictly: %d missing keys %s, %d unexpected keys %s",
            where,
            len(missing),
            _preview(missing),
            len(unexpected),
            _preview(unexpected),
        )
    model.load_state_dict(state, strict=strict)
    return model


def _strip_prefixes(name: str) -> str:
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def _preview(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = len(items) - _SHOWN
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"
