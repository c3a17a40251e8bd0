"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import TEACHER
from ndkd import class_means
from ndkd.data import InMemoryLoader, build_dataset
from ndkd.models import create_model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory) -> tuple[Path, Path]:
    """A (randomly initialised) digits teacher checkpoint in the public layout, and its class
    means: what `ndkd centers` would write."""
    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    teacher = create_model(TEACHER, 10, in_channels=1)
    checkpoint = folder / "teacher.pth"
    torch.save({"model": teacher.state_dict()}, checkpoint)
    loader = InMemoryLoader(build_dataset("digits", None, "train"), 256)
    centers = class_means(teacher, loader, 10).save(folder / "centers.safetensors")
    return checkpoint, centers
