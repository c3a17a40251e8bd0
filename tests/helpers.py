"""Helpers shared by the engine and CLI tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

TEACHER, STUDENT = "wrn_16_2", "resnet8"  # 128-d vs 64-d embeddings: the nd projector is used


def write_kdpp_config(
    folder: Path, teacher: tuple[Path, Path], epochs: int = 3, batch_size: int = 64
) -> Path:
    """A KD++ run on digits: CE + KD (warm-up) + ND with a projector."""
    checkpoint, centers = teacher
    path = folder / "kdpp.yaml"
    path.write_text(f"""
seed: 0
device: cpu
output_dir: {folder / "run"}
data: {{name: digits}}
teacher: {{arch: {TEACHER}, checkpoint: {checkpoint}}}
student: {{arch: {STUDENT}}}
centers: {{path: {centers}}}
train: {{epochs: {epochs}, batch_size: {batch_size}, lr: 0.05, milestones: [2]}}
terms:
  - {{name: ce, weight: 1.0}}
  - {{name: kd, weight: 1.0, temperature: 4.0, warmup_epochs: 2}}
  - {{name: nd, weight: 2.0}}
""")
    return path


def write_digits_run(folder: Path, checkpoint: Path, terms: list[str], batch_size: int) -> Path:
    """A one-epoch run on digits of the resnet8 student with the wrn_16_2 ``checkpoint`` as
    teacher and ``terms`` (YAML flow mappings, e.g. ``"{name: ce, weight: 0.1}"``)."""
    path = folder / "run.yaml"
    listed = "".join(f"\n  - {term}" for term in terms)
    path.write_text(f"""
seed: 0
device: cpu
output_dir: {folder / "run"}
data: {{name: digits}}
teacher: {{arch: {TEACHER}, checkpoint: {checkpoint}}}
student: {{arch: {STUDENT}}}
train: {{epochs: 1, batch_size: {batch_size}, lr: 0.05, milestones: [1]}}
terms:{listed}
""")
    return path


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

    path = folder / "run.yaml"
    path.write_text(f"""
recipe: digits/ce/resnet8
seed: 3
device: cpu
output_dir: {folder / "run"}
data: {{name: digits}}
student: {{arch: resnet8}}
train: {{epochs: 1, batch_size: 128, lr: 0.05, milestones: [1]}}
terms:
  - {{name: ce, weight: 1.0}}
""")
    experiment.train(load_config(path))
    return folder / "run"
