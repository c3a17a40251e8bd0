"""Which device a run uses."""

from __future__ import annotations

import torch

from ndkd.engine.distributed import SINGLE_PROCESS, DistInfo


def resolve_device(name: str, dist: DistInfo = SINGLE_PROCESS) -> torch.device:
    """``auto`` -> this process's GPU when available, else CPU; otherwise the named device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device
