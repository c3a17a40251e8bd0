"""Helpers shared by the engine and CLI tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

TEACHER, STUDENT = "wrn_16_2", "resnet8"  # 128-d vs 64-d embeddings: the nd projector is used


def write_digits_config(
    folder: Path,
    terms: list[str],
    *,
    name: str = "run.yaml",
    teacher: Path | None = None,
    centers: Path | None = None,
    epochs: int = 1,
    batch_size: int = 64,
    milestones: int = 1,
    head: str = "seed: 0",
) -> Path:
    """``folder/name``: a run on digits of the resnet8 student writing ``folder/run``, with
    the wrn_16_2 ``teacher`` checkpoint and ``centers`` when given, and ``terms`` (YAML flow
    mappings, e.g. ``"{name: ce, weight: 0.1}"``); ``head`` opens the file."""
    lines = [head, "device: cpu", f"output_dir: {folder / 'run'}", "data: {name: digits}"]
    if teacher is not None:
        lines.append(f"teacher: {{arch: {TEACHER}, checkpoint: {teacher}}}")
    lines.append(f"student: {{arch: {STUDENT}}}")
    if centers is not None:
        lines.append(f"centers: {{path: {centers}}}")
    lines.append(
        f"train: {{epochs: {epochs}, batch_size: {batch_size}, lr: 0.05, "
        f"milestones: [{milestones}]}}"
    )
    lines += ["terms:", *(f"  - {term}" for term in terms)]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def write_kdpp_config(
    folder: Path, teacher: tuple[Path, Path], epochs: int = 3, batch_size: int = 64
) -> Path:
    """A KD++ run on digits: CE + KD (warm-up) + ND with a projector."""
    checkpoint, centers = teacher
    terms = [
        "{name: ce, weight: 1.0}",
        "{name: kd, weight: 1.0, temperature: 4.0, warmup_epochs: 2}",
        "{name: nd, weight: 2.0}",
    ]
    return write_digits_config(
        folder,
        terms,
        name="kdpp.yaml",
        teacher=checkpoint,
        centers=centers,
        epochs=epochs,
        batch_size=batch_size,
        milestones=2,
    )


def ndkd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ndkd", *args]


def run_ndkd(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(ndkd_command(*args), capture_output=True, text=True, **kwargs)


def with_trained_statistics(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with non-trivial BN statistics and affine parameters, as a
    trained model has."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


def train_digits_ce_run(folder: Path) -> Path:
    """A one-epoch resnet8 CE run on digits (seed 3) in ``folder/run``; returns that folder."""
    from ndkd import experiment
    from ndkd.config import load_config

    path = write_digits_config(
        folder,
        ["{name: ce, weight: 1.0}"],
        batch_size=128,
        head="recipe: digits/ce/resnet8\nseed: 3",
    )
    experiment.train(load_config(path))
    return folder / "run"
