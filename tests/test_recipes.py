"""Every recipe in configs/ dry-runs, and the CIFAR-100 recipes carry the published settings."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import ndkd.data.cifar as cifar_module
from ndkd import ClassMeans
from ndkd.cli import main
from ndkd.config import load_config
from ndkd.models import create_model

ROOT = Path(__file__).resolve().parents[1]
OTHER_FAMILIES = {"imagenet", "multilabel", "detection"}  # tests/test_<family>_recipes.py
RECIPES = sorted(  # on CIFAR-format data
    p
    for p in (ROOT / "configs").rglob("*.yaml")
    if not p.name.startswith("_")
    and not OTHER_FAMILIES & set(p.relative_to(ROOT / "configs").parts)
)
PAIRS = {  # teacher -> student: (KD++ kd weight, nd weight), from the paper's public code
    "resnet56_resnet20": (1.0, 2.0),
    "resnet32x4_resnet8x4": (3.5, 2.0),
    "wrn_40_2_wrn_40_1": (1.0, 1.5),
    "resnet50_cifar_mobilenetv2": (3.0, 0.5),
    "resnet32x4_shufflenetv1": (2.5, 1.5),
    "resnet32x4_shufflenetv2": (4.0, 0.5),
}
LIGHT_STUDENTS = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory):
    """A small CIFAR-100 folder in the standard layout (the reader's counts patched)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (("train", 200), ("test", 100)):
        batch = {
            "fine_labels": [i % 100 for i in range(count)],
            "coarse_labels": [0] * count,
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    return root


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Randomly initialised teacher checkpoints and matching class-means files, by arch."""
    folder = tmp_path_factory.mktemp("teachers")
    made = {}
    archs = {load_config(p).teacher.arch for p in RECIPES} - {""}
    for arch in sorted(archs):
        model = create_model(arch, 100)
        checkpoint = folder / f"{arch}.pth"
        torch.save({"model": model.state_dict()}, checkpoint)
        means = ClassMeans(torch.rand(100, model.embedding_dim) + 0.1)
        made[arch] = (checkpoint, means.save(folder / f"{arch}.safetensors"))
    return made


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_recipe_dry_runs(recipe, cifar100_root, teachers, monkeypatch, tmp_path, capsys):
    spec = cifar_module.SPECS["cifar100"]
    monkeypatch.setitem(
        cifar_module.SPECS,
        "cifar100",
        dataclasses.replace(spec, counts={"train": 200, "test": 100}),
    )
    config = load_config(recipe)
    overrides = [f"data.root={cifar100_root}", f"output_dir={tmp_path / 'run'}", "device=cpu"]
    overrides.append("data.num_workers=0")  # speed only (the two-view recipes set 4)
    if config.teacher.arch:
        checkpoint, centers = teachers[config.teacher.arch]
        overrides += [f"teacher.checkpoint={checkpoint}", f"centers.path={centers}"]
    assert main(["train", "-c", str(recipe), "--dry-run", *overrides]) == 0
    assert "config ok" in capsys.readouterr().out


def test_the_six_pairs_have_kdpp_and_its_controlled_kd_with_published_settings():
    for stem, (kd_weight, nd_weight) in PAIRS.items():
        for method in ("controlled/kd", "kd++"):
            config = load_config(ROOT / "configs" / "cifar100" / method / f"{stem}.yaml")
            terms = {t.name: t for t in config.terms}
            assert set(terms) == ({"ce", "kd", "nd"} if method == "kd++" else {"ce", "kd"})
            assert terms["ce"].weight == 1.0
            assert terms["kd"].weight == kd_weight
            assert terms["kd"].params == {"temperature": 4.0}
            assert terms["kd"].warmup_epochs == 20
            if method == "kd++":
                assert terms["nd"].weight == nd_weight and terms["nd"].warmup_epochs == 0
            assert f"{config.teacher.arch}_{config.student.arch}" == stem
            train = config.train
            assert (train.epochs, train.batch_size, train.milestones) == (240, 128, [150, 180, 210])
            assert (train.momentum, train.nesterov, train.weight_decay) == (0.9, True, 5e-4)
            assert train.lr == (0.02 if config.student.arch in LIGHT_STUDENTS else 0.1)
            assert config.centers.transform == "train"
