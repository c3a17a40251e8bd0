"""Load state dicts in the public CIFAR-100 checkpoint layout (and common wrappers of it)."""

from __future__ import annotations

import logging
import os
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
        CheckpointMismatchError: missing, unexpected or mis-shaped keys; all are listed.
    """
    if isinstance(source, Mapping):
        where, checkpoint = "checkpoint", source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        where = f"checkpoint {path}"
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"{where} holds a {type(checkpoint).__name__}, not a state dict")
    state = extract_state_dict(checkpoint)
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
