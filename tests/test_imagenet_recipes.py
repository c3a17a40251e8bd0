"""The ImageNet recipes (configs/imagenet/) carry the published settings, every expected
recipe exists and is checked here, and every one dry-runs on a tiny image folder."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ndkd import ClassMeans
from ndkd.cli import main
from ndkd.config import load_config
from ndkd.models import create_model
from test_published_recipes import term_rows

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = ROOT / "configs" / "imagenet"
RECIPES = sorted(  # the ND ResNet families; strong/ (DeiT) has its own test, beyond/ its below
    p
    for p in IMAGENET.rglob("*.yaml")
    if not p.name.startswith("_") and not {"strong", "beyond"} & set(p.relative_to(IMAGENET).parts)
)

# --- the sources, as tables ----------------------------------------------------------------

# Teacher -> student pairs, by the recipe file stem; (teacher name, teacher arch, student arch).
PAIRS = {
    "resnet34_resnet18": ("resnet34", "torchvision:resnet34", "torchvision:resnet18"),
    "resnet50_resnet18": ("resnet50", "torchvision:resnet50", "torchvision:resnet18"),
    "resnet101_resnet18": ("resnet101", "torchvision:resnet101", "torchvision:resnet18"),
    "resnet152_resnet18": ("resnet152", "torchvision:resnet152", "torchvision:resnet18"),
    "resnet50_mobilenet_v1": ("resnet50", "torchvision:resnet50", "mobilenet_v1"),
    "resnet152_resnet34": ("resnet152", "torchvision:resnet152", "torchvision:resnet34"),
    "resnet152_resnet50": ("resnet152", "torchvision:resnet152", "torchvision:resnet50"),
    "resnet152_resnet101": ("resnet152", "torchvision:resnet152", "torchvision:resnet101"),
    "vit_small_patch16_224_resnet18": (
        "vit_small_patch16_224",
        "timm:vit_small_patch16_224",
        "torchvision:resnet18",
    ),
    "vit_base_patch16_224_resnet18": (
        "vit_base_patch16_224",
        "timm:vit_base_patch16_224",
        "torchvision:resnet18",
    ),
    "resnet152_vit_small_patch16_224": (
        "resnet152",
        "torchvision:resnet152",
        "timm:vit_small_patch16_224",
    ),
    "resnet152_vit_base_patch16_224": (
        "resnet152",
        "torchvision:resnet152",
        "timm:vit_base_patch16_224",
    ),
}
# Penultimate embedding dims (recipes.md: 512 for ResNet-18/34, 2048 for ResNet-50/101/152,
# 1024 for MobileNet-V1; timm: 384 for ViT-S, 768 for ViT-B). The nd term projects the
# student's embedding when the dims differ; the ImageNet recipes then init it N(0, 0.01).
DIMS = {
    "torchvision:resnet18": 512,
    "torchvision:resnet34": 512,
    "torchvision:resnet50": 2048,
    "torchvision:resnet101": 2048,
    "torchvision:resnet152": 2048,
    "mobilenet_v1": 1024,
    "timm:vit_small_patch16_224": 384,
    "timm:vit_base_patch16_224": 768,
}
PROJECTOR_INIT_STD = 0.01  # recipes.md: "The ImageNet projector initialises ... N(0, 0.01)"

# recipes.md, "ImageNet (Table 2, Fig. 5, Table 6)" weights table (the paper's public code:
# ImageNet/train.sh, ImageNet/ReviewKD++/train_reviewkd.sh, ImageNet/ViT/train.sh).
KDPP = {  # KD++: (kd, nd)
    "resnet34_resnet18": (2.5, 1.0),
    "resnet50_resnet18": (4.0, 1.0),
    "resnet101_resnet18": (3.5, 4.0),
    "resnet152_resnet18": (4.0, 2.0),
    "resnet50_mobilenet_v1": (4.0, 1.0),
    "vit_small_patch16_224_resnet18": (1.5, 1.0),
    "vit_base_patch16_224_resnet18": (2.0, 1.0),
}
DKDPP = {  # DKD++: (alpha, beta, nd)
    "resnet34_resnet18": (0.8, 0.5, 1.0),
    "resnet50_resnet18": (0.6, 0.5, 2.0),
    "resnet101_resnet18": (0.8, 0.5, 1.0),
    "resnet152_resnet18": (1.0, 1.0, 1.0),
    "resnet50_mobilenet_v1": (0.8, 1.0, 1.0),
    "vit_small_patch16_224_resnet18": (1.0, 1.0, 2.0),
    "vit_base_patch16_224_resnet18": (1.4, 0.5, 2.0),
}
REVIEWKDPP = {  # ReviewKD++: (HCL "kd", nd)
    "resnet34_resnet18": (1.0, 3.0),
    "resnet50_resnet18": (3.0, 2.0),
    "resnet101_resnet18": (3.0, 1.0),
    "resnet152_resnet18": (3.0, 1.0),
    "resnet50_mobilenet_v1": (8.0, 4.0),
}
# Table 6 (ResNet-152 teacher, larger students): no weights are published for these students;
# the recipes take the resnet152 -> resnet18 row for all of them (a choice their comments state).
TABLE6 = (
    "resnet152_resnet18",
    "resnet152_resnet34",
    "resnet152_resnet50",
    "resnet152_resnet101",
    "resnet152_vit_small_patch16_224",  # ViT students with the ResNet recipe
    "resnet152_vit_base_patch16_224",
)
for _stem in TABLE6[1:]:
    KDPP[_stem] = KDPP["resnet152_resnet18"]

TEMPERATURE = 1.0  # paper Sec. 4.1 / recipes.md: T = 1 on ImageNet
WARMUP = 5  # recipes.md: KD-term warm-up 5 epochs (DKD++ also warms up nd)

SIX = ("kd", "kd++", "dkd", "dkd++", "reviewkd", "reviewkd++")
EXPERIMENTS = {  # which (method, pair) recipes each paper table / experiment needs
    "Table 2": (SIX, ("resnet34_resnet18", "resnet50_mobilenet_v1")),
    "Fig. 5": (
        SIX,
        ("resnet34_resnet18", "resnet50_resnet18", "resnet101_resnet18", "resnet152_resnet18"),
    ),
    "Table 6": (("kd", "kd++"), TABLE6),
    "ViT teachers (public code)": (
        ("kd", "kd++", "dkd", "dkd++"),
        ("vit_small_patch16_224_resnet18", "vit_base_patch16_224_resnet18"),
    ),
}
BASELINES = {  # CE-only students (Tables 2 and 6 "student" rows)
    "resnet18": "torchvision:resnet18",
    "resnet34": "torchvision:resnet34",
    "resnet50": "torchvision:resnet50",
    "resnet101": "torchvision:resnet101",
    "mobilenet_v1": "mobilenet_v1",
    "vit_small_patch16_224": "timm:vit_small_patch16_224",
    "vit_base_patch16_224": "timm:vit_base_patch16_224",
}

# The ImageNet schedule (paper Sec. 4.1, recipes.md), the same for every recipe.
SCHEDULE = {
    "epochs": 100,
    "batch_size": 512,
    "lr": 0.2,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 1e-4,
    "schedule": "multistep",
    "milestones": [30, 60, 90],
    "gamma": 0.1,
    "lr_warmup_epochs": 0.0,
    "amp": "bf16",
    "channels_last": True,
    "checkpoint_every_minutes": 30.0,
}
DATA = {
    "name": "imagefolder",
    "root": "data/imagenet",
    "num_workers": 8,
    "image_size": 224,
    "eval_resize": 256,
}


def _nd(stem: str, weight: float, warmup: float) -> tuple:
    _, teacher, student = PAIRS[stem]
    params = {"projector_init_std": PROJECTOR_INIT_STD} if DIMS[teacher] != DIMS[student] else {}
    return ("nd", weight, warmup, params)


def expected_terms(method: str, stem: str) -> list[tuple]:
    """``(name, weight, warmup_epochs, params)`` per term. The plain rows are the ++ settings
    without the nd term (recipes.md; the recipes say so)."""
    terms: list[tuple] = [("ce", 1.0, 0.0, {})]
    if method in ("kd", "kd++"):
        kd, nd = KDPP[stem]
        terms.append(("kd", kd, WARMUP, {"temperature": TEMPERATURE}))
        if method == "kd++":
            terms.append(_nd(stem, nd, 0.0))
    elif method in ("dkd", "dkd++"):
        alpha, beta, nd = DKDPP[stem]
        params = {"alpha": alpha, "beta": beta, "temperature": TEMPERATURE}
        terms.append(("dkd", 1.0, WARMUP, params))
        if method == "dkd++":
            terms.append(_nd(stem, nd, WARMUP))  # DKD++ on ImageNet warms nd up too
    else:
        hcl, nd = REVIEWKDPP[stem]
        # the ReviewKD ImageNet code's fusion width: 256 for R50 -> MV1, else its default
        fusion = {"mid_channels": 256} if stem == "resnet50_mobilenet_v1" else {}
        terms.append(("reviewkd", hcl, WARMUP, fusion))
        if method == "reviewkd++":
            terms.append(_nd(stem, nd, 0.0))
    return terms


def _expected() -> dict[str, dict]:
    table: dict[str, dict] = {}
    for methods, stems in EXPERIMENTS.values():
        for method in methods:
            for stem in stems:
                name, teacher, student = PAIRS[stem]
                table[f"{method}/{stem}"] = {
                    "teacher": teacher,
                    "teacher_name": name,
                    "student": student,
                    "terms": expected_terms(method, stem),
                }
    for name, student in BASELINES.items():
        table[f"baseline/{name}"] = {
            "teacher": "",
            "teacher_name": None,
            "student": student,
            "terms": [("ce", 1.0, 0.0, {})],
        }
    return table


EXPECTED = _expected()


def _key(path: Path) -> str:
    return path.relative_to(IMAGENET).with_suffix("").as_posix()


# --- settings ------------------------------------------------------------------------------


def test_every_expected_recipe_exists_and_every_recipe_is_in_the_table():
    present = {_key(p) for p in RECIPES}
    assert sorted(set(EXPECTED) - present) == [], "expected recipes missing"
    assert sorted(present - set(EXPECTED)) == [], "recipes not covered by the table"
    assert len(EXPECTED) == 55  # 30 (Table 2 + Fig. 5) + 10 (Table 6) + 8 (ViT) + 7 baselines


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_recipe_carries_the_published_settings(key):
    want = EXPECTED[key]
    path = IMAGENET / f"{key}.yaml"
    config = load_config(path)
    assert config.student.arch == want["student"]
    assert config.teacher.arch == want["teacher"]
    assert not config.teacher.pretrained and not config.student.pretrained
    assert config.student.checkpoint is None
    if want["teacher_name"]:
        name = want["teacher_name"]
        assert config.teacher.checkpoint == f"ckpt/imagenet/{name}.pth"
        assert config.centers.path == f"centers/imagenet/{name}.safetensors"
    else:
        assert config.teacher.checkpoint is None
    terms = [(t.name, t.weight, t.warmup_epochs, t.params) for t in config.terms]
    assert terms == want["terms"]
    assert {k: getattr(config.train, k) for k in SCHEDULE} == SCHEDULE
    assert {k: getattr(config.data, k) for k in DATA} == DATA
    assert config.centers.transform == "train"
    assert config.output_dir == f"runs/imagenet/{key}/seed0"
    assert config.seed == 0


def test_each_recipe_names_its_source_and_the_base_states_the_lr_rule():
    for path in RECIPES:
        head = path.read_text(encoding="utf-8").split("\nbase:")[0]
        assert head.startswith("# ") and ("paper" in head or "public code" in head), path
    base = (IMAGENET / "_base.yaml").read_text(encoding="utf-8")
    assert "LR = 0.2 x batch / 512" in base and "never rescales" in base


# --- dry runs --------------------------------------------------------------------------------

CLASSES = 4
# A ViT takes the 224 input its position embeddings are made for; the CNNs run at 32.
IMAGE_SIZES = {"timm:": (224, 256)}
SMALL = (32, 36)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """``train/`` and ``val/`` with 4 class folders x 2 JPEGs of 32x32 (scikit-learn digits)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("imagefolder")
    for split, offset in (("train", 0), ("val", 2)):
        for label in range(CLASSES):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True)
            rows = np.flatnonzero(digits.target == label)[offset : offset + 2]
            for row in rows:
                gray = (digits.images[row] * (255 / 16)).astype(np.uint8)
                image = Image.fromarray(gray).resize((32, 32), Image.NEAREST).convert("RGB")
                image.save(folder / f"{row}.JPEG", format="JPEG")
    return root


class _Teachers:
    """Random-weight teacher state dicts and class-means files, each arch written once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[str, tuple[Path, Path]] = {}

    def __call__(self, arch: str) -> tuple[Path, Path]:
        if arch not in self.made:
            stem = arch.replace(":", "_")
            checkpoint = self.folder / f"{stem}.pth"
            torch.save(create_model(arch, num_classes=CLASSES).state_dict(), checkpoint)
            means = ClassMeans(torch.rand(CLASSES, DIMS[arch]) + 0.1)
            self.made[arch] = (checkpoint, means.save(self.folder / f"{stem}.safetensors"))
        return self.made[arch]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Iterator[_Teachers]:
    """Written on first use per arch; removed after the module (about 1 GB in all: ResNet-152
    and ViT-B alone are 230 and 340 MB)."""
    folder = tmp_path_factory.mktemp("imagenet_teachers")
    yield _Teachers(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _small_run(config, image_root, teachers, tmp_path) -> list[str]:
    """Overrides that run ``config`` on the tiny image folder with random-weight teachers."""
    archs = (config.teacher.arch, config.student.arch)
    size, resize = next(
        (
            sizes
            for prefix, sizes in IMAGE_SIZES.items()
            if any(arch.startswith(prefix) for arch in archs)
        ),
        SMALL,
    )
    overrides = [
        f"data.root={image_root}",
        f"data.image_size={size}",
        f"data.eval_resize={resize}",
        "data.num_workers=0",
        "train.batch_size=4",
        "device=cpu",
        "train.amp=none",
        "train.channels_last=false",  # speed only; channels-last convs are slower on CPU
        f"output_dir={tmp_path / 'run'}",
    ]
    if config.teacher.arch:
        checkpoint, centers = teachers(config.teacher.arch)
        overrides += [f"teacher.checkpoint={checkpoint}", f"centers.path={centers}"]
    return overrides


@pytest.mark.parametrize("recipe", RECIPES, ids=_key)
def test_recipe_dry_runs(recipe, image_root, teachers, tmp_path, capsys):
    overrides = _small_run(load_config(recipe), image_root, teachers, tmp_path)
    assert main(["train", "-c", str(recipe), "--dry-run", *overrides]) == 0
    out = capsys.readouterr().out
    assert "config ok" in out and f"{2 * CLASSES} training images" in out


TABLE6_RUNS = [f"{method}/{stem}" for method in ("kd", "kd++") for stem in TABLE6] + [
    "baseline/vit_small_patch16_224",
    "baseline/vit_base_patch16_224",
]


@pytest.mark.slow  # about 3 minutes on 2 cores (ResNet-152 and ViT-B on CPU)
@pytest.mark.parametrize("key", TABLE6_RUNS)
def test_table6_recipe_trains_end_to_end(key, image_root, teachers, tmp_path):
    """One epoch (two steps) of every Table 6 recipe, as written, on the tiny folder."""
    recipe = IMAGENET / f"{key}.yaml"
    overrides = _small_run(load_config(recipe), image_root, teachers, tmp_path)
    assert main(["train", "-c", str(recipe), *overrides, "train.epochs=1"]) == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["test_samples"] == 2 * CLASSES and math.isfinite(record["loss"])


# ImageNet resnet34 -> resnet18, the methods that published one (sources in each file):
# logit-standardization-KD README (mdistiller r34_r18/kd.yaml + --logit-stand --base-temp 2
# --kd-weight 9), cls_KD res34_distill_res18_img.py, CTKD scripts/run_imagenet_distill.sh,
# WTTM's Table 10 (gamma 0.8, beta 1.6), MLKD's two-view configs/imagenet/r34_r18/kd_ours.yaml.
BEYOND = IMAGENET / "beyond"
IMAGENET_BEYOND_TABLE = {  # method: (epochs, batch, lr, terms)
    "kd_ls": (
        100,
        512,
        0.2,
        [
            ("ce", 1.0, {}, 0, 0),
            ("kd", 9.0, {"temperature": 2.0, "standardize": True}, 0, 0),
        ],
    ),
    "nkd": (
        100,
        256,
        0.1,
        [("ce", 1.0, {}, 0, 0), ("nkd", 1.0, {"temperature": 1.0, "gamma": 1.5}, 0, 0)],
    ),
    "wttm": (  # the paper's Table 10; torchdistill's official ImageNet KD schedule
        100,
        256,
        0.1,
        [("ce", 1.0, {}, 0, 0), ("wttm", 1.6, {"gamma": 0.8}, 0, 0)],
    ),
    "mlkd_two_view": (  # Jin-Ying/Multi-Level-Logit-Distillation r34_r18/kd_ours.yaml
        100,
        512,
        0.1,
        [
            ("ce", 0.5, {}, 0, 0),
            ("ce@strong", 0.5, {}, 0, 0),
            ("mlkd", 0.5, {"temperatures": [1, 3, 5, 2, 6], "mask": "scale"}, 0, 0),
            (
                "mlkd@strong",
                0.5,
                {"temperatures": [1, 3, 5], "mask": "none", "levels": ["instance"]},
                0,
                0,
            ),
            (
                "mlkd@weak",
                0.5,
                {"temperatures": [2, 6], "mask": "none", "levels": ["instance"]},
                0,
                0,
            ),
        ],
    ),
    "ctkd": (
        120,
        256,
        0.1,
        [
            ("ce", 1.0, {}, 0, 0),
            ("ctkd", 1.0, {"loss": "kd", "mode": "global", "curriculum_epochs": 5}, 0, 0),
        ],
    ),
}
BEYOND_RECIPES = sorted(BEYOND.rglob("*.yaml"))


@pytest.mark.parametrize("method", sorted(IMAGENET_BEYOND_TABLE))
def test_beyond_recipe_has_its_sources_settings_and_plus_plus_adds_nd(method):
    epochs, batch, lr, terms = IMAGENET_BEYOND_TABLE[method]
    for variant, expected in (("", terms), ("++", [*terms, ("nd", 1.0, {}, 0, 0)])):
        config = load_config(BEYOND / f"{method}{variant}" / "resnet34_resnet18.yaml")
        assert (config.teacher.arch, config.student.arch) == (
            "torchvision:resnet34",
            "torchvision:resnet18",
        )
        assert term_rows(config) == expected
        train = config.train
        assert (train.epochs, train.batch_size, train.lr, train.nesterov) == (
            epochs,
            batch,
            lr,
            False,
        )
        assert (train.milestones, train.weight_decay) == ([30, 60, 90], 1e-4)
        assert bool(config.data.strong_view) == method.endswith("two_view")
    assert {p.parent.name for p in BEYOND_RECIPES} == {
        f"{m}{v}" for m in IMAGENET_BEYOND_TABLE for v in ("", "++")
    }


@pytest.mark.parametrize("recipe", BEYOND_RECIPES, ids=lambda p: p.parent.name)
def test_beyond_recipe_dry_runs(recipe, image_root, teachers, tmp_path, capsys):
    overrides = _small_run(load_config(recipe), image_root, teachers, tmp_path)
    assert main(["train", "-c", str(recipe), "--dry-run", *overrides]) == 0
    assert "config ok" in capsys.readouterr().out
