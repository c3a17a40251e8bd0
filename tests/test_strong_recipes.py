"""The strong (DeiT) ImageNet recipe for transformer students: every recipe's settings
against recipes.md's DeiT++ facts, a dry-run of each on a small image folder, and a short
DeiT++-style run end to end on CPU (distillation token, hard distillation, nd on mixed
images, AdamW, RandAugment, random erasing, repeated augmentation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ndkd import ClassMeans
from ndkd.cli import main
from ndkd.config import load_config
from ndkd.models import create_model
from test_imagefolder import write_image_folder

STRONG = Path(__file__).resolve().parents[1] / "configs" / "imagenet" / "strong"
RECIPES = sorted(p for p in STRONG.rglob("*.yaml") if not p.name.startswith("_"))

# recipes.md, "DeiT++": 300 epochs, batch 2048, AdamW (0.9, 0.95), base LR 1e-4 x batch/256,
# WD 0.3, 20-epoch warm-up + cosine, drop path 0.1, RandAugment m9-mstd0.5, label smoothing
# 0.1, mixup 0.8 / cutmix 1.0, random erasing 0.25, hard distillation x 0.5, ND 1.5.
TRAIN = {
    "epochs": 300,
    "batch_size": 2048,
    "optimizer": "adamw",
    "betas": [0.9, 0.95],
    "lr": 1e-4,
    "lr_reference_batch": 256,
    "weight_decay": 0.3,
    "decay_norms_and_biases": False,
    "schedule": "cosine",
    "lr_warmup_epochs": 20.0,
    "min_lr": 1e-5,  # DeiT's default
}
DATA = {
    "name": "imagefolder",
    "rand_augment": "rand-m9-mstd0.5-inc1",
    "random_erasing": 0.25,
    "repeated_augmentations": 3,  # DeiT's
    "mixup": 0.8,
    "cutmix": 1.0,
    "mixup_switch_prob": 0.5,
}
SMOOTH = {"label_smoothing": 0.1}
DEIT = ("timm:regnety_160", "timm:deit_base_distilled_patch16_224")
VIT_B = ("torchvision:resnet152", "timm:vit_base_patch16_224")
EXPECTED = {
    "deit++/regnety_160_deit_base_distilled_patch16_224": (
        DEIT,
        [("ce", 0.5, SMOOTH), ("hard_distill", 0.5, {}), ("nd", 1.5, {"projector_init_std": 0.01})],
    ),
    "deit/regnety_160_deit_base_distilled_patch16_224": (
        DEIT,
        [("ce", 0.5, SMOOTH), ("hard_distill", 0.5, {})],
    ),
    "kd++/resnet152_vit_base_patch16_224": (
        VIT_B,
        [
            ("ce", 1.0, SMOOTH),
            ("kd", 4.0, {"temperature": 1.0}),
            ("nd", 2.0, {"projector_init_std": 0.01}),
        ],
    ),
    "kd/resnet152_vit_base_patch16_224": (
        VIT_B,
        [("ce", 1.0, SMOOTH), ("kd", 4.0, {"temperature": 1.0})],
    ),
    "baseline/vit_base_patch16_224": (("", "timm:vit_base_patch16_224"), [("ce", 1.0, SMOOTH)]),
}


def test_every_recipe_is_in_the_table():
    assert {str(p.relative_to(STRONG).with_suffix("")) for p in RECIPES} == set(EXPECTED)


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_recipe_settings(key):
    (teacher, student), terms = EXPECTED[key]
    config = load_config(STRONG / f"{key}.yaml")
    assert (config.teacher.arch, config.student.arch) == (teacher, student)
    assert config.student.drop_path == 0.1
    assert [(t.name, t.weight, t.params) for t in config.terms] == terms
    assert all(t.warmup_epochs == 0 for t in config.terms)
    assert {k: getattr(config.train, k) for k in TRAIN} == TRAIN
    assert {k: getattr(config.data, k) for k in DATA} == DATA
    assert config.output_dir == f"runs/imagenet/strong/{key}/seed0"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), classes=4, per_class=3, size=40)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(STRONG)))
def test_recipe_dry_runs(recipe, folder, tmp_path, capsys):
    config = load_config(recipe)
    overrides = [
        f"data.root={folder}",
        "data.num_workers=0",
        "train.batch_size=4",
        "train.min_lr=0",  # the recipe's floor is above the LR of a batch of 4
        "device=cpu",
        "train.amp=none",
        f"output_dir={tmp_path / 'run'}",
    ]
    if config.teacher.arch:
        teacher = create_model(config.teacher.arch, 4)
        torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
        ClassMeans(torch.rand(4, teacher.embedding_dim) + 0.1).save(tmp_path / "c.safetensors")
        overrides += [f"teacher.checkpoint={tmp_path / 'teacher.pth'}"]
        overrides += [f"centers.path={tmp_path / 'c.safetensors'}"]
    assert main(["train", "-c", str(recipe), "--dry-run", *overrides]) == 0
    assert "config ok" in capsys.readouterr().out


def test_deitpp_style_run_end_to_end(folder, tmp_path):
    """The DeiT++ recipe's every piece, on tiny models: a DeiT-tiny with a distillation
    token distilled from a resnet8, 2 epochs."""
    teacher = create_model("resnet8", 4)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    recipe = STRONG / "deit++" / "regnety_160_deit_base_distilled_patch16_224.yaml"
    common = [
        f"data.root={folder}",
        "data.image_size=224",  # the ViT's own input size (its position embeddings)
        "data.eval_resize=256",
        "data.num_workers=0",
        "teacher.arch=resnet8",
        f"teacher.checkpoint={tmp_path / 'teacher.pth'}",
        f"centers.path={tmp_path / 'centers.safetensors'}",
        "device=cpu",
        "train.amp=none",
        "train.batch_size=4",
        "train.epochs=2",
        "train.lr_warmup_epochs=1",
        "train.min_lr=0",  # the recipe's floor is above the LR of a batch of 4
        f"output_dir={tmp_path / 'run'}",
        "train.ema_decay=0.9",
        "train.clip_grad_norm=1.0",
    ]
    student = [
        "student.arch=timm:deit_tiny_distilled_patch16_224",
    ]
    assert main(["centers", "-c", str(recipe), *common]) == 0
    assert main(["train", "-c", str(recipe), *common, *student]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(records) == 2
    for key in ("loss/ce", "loss/hard_distill", "loss/nd", "test_top1", "ema_test_top1"):
        assert key in records[-1] and records[-1][key] == records[-1][key]  # present, not NaN


def test_gradient_checkpointing_keeps_the_gradients():
    from ndkd.config import ModelConfig
    from ndkd.experiment.models import build_model

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        spec = ModelConfig("timm:vit_tiny_patch16_224", grad_checkpointing=checkpointing)
        model = build_model(spec, "student", 5, 3, torch.device("cpu")).train()
        torch.manual_seed(1)
        model(torch.randn(2, 3, 224, 224)).logits.sum().backward()
        grads.append(model.patch_embed.proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ValueError, match="student.grad_checkpointing: an option of timm"):
        build_model(ModelConfig("resnet8", grad_checkpointing=True), "student", 5, 3, "cpu")
