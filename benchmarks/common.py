"""Shared pieces of the benchmark scripts: timing and CIFAR-shaped synthetic data."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def describe_machine() -> str:
    """One line naming the software and hardware a figure was measured on."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
        f"{platform.machine()}; {device}"
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cifar_like(n: int, classes: int = 100, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random uint8 images ``[n, 3, 32, 32]`` and labels covering every class."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % classes
    return images, labels[torch.randperm(n, generator=generator)]
