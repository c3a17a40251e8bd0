"""The detection recipes carry the settings of their public code (Table 3: the ND repository's
Detectron2 configs; VOC: LSHFM's detection scripts), chain to their teacher runs, and dry-run
on tiny COCO and VOC folders (random-weight teachers, small images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ndkd import ClassMeans
from ndkd.cli import main
from ndkd.config import load_config
from ndkd.models import create_model
from test_detection_data import write_coco2017
from test_detection_voc import write_voc0712

ROOT = Path(__file__).resolve().parents[1] / "configs" / "detection"
RECIPES = {
    str(p.relative_to(ROOT).with_suffix("")): p
    for p in sorted(ROOT.rglob("*.yaml"))
    if not p.name.startswith("_")
}
KD = ("kd", 1.0, {"temperature": 1.0})
# Table 3: pair -> method -> terms (name, weight, params), from the public configs
COCO = {
    "resnet101_resnet18": {
        "kd": [KD],
        "kd++": [KD, ("nd", 1.5, {})],
        "reviewkd": [("reviewkd", 1.2, {"levels": "fpn"})],
        "reviewkd++": [("reviewkd", 1.2, {"levels": "fpn"}), ("nd", 1.5, {})],
    },
    "resnet101_resnet50": {
        "kd": [KD],
        "kd++": [KD, ("nd", 1.0, {})],
        "reviewkd": [("reviewkd", 1.0, {"levels": "fpn"})],
        "reviewkd++": [("reviewkd", 1.4, {"levels": "fpn"}), ("nd", 1.0, {})],
    },
    "resnet50_mobilenet_v2": {
        "kd": [KD],
        "kd++": [KD, ("nd", 1.0, {})],
        "reviewkd": [("reviewkd", 2.0, {"levels": "fpn"})],
        "reviewkd++": [("reviewkd", 2.2, {"levels": "fpn"}), ("nd", 1.5, {})],
    },
}
ARCHS = {
    "resnet101": "resnet101",
    "resnet50": "resnet50",
    "resnet18": "resnet18",
    "mobilenet_v2": "mobilenet_v2",
    "vgg16": "vgg16",
    "vgg11": "vgg11",
}
VOC_WEIGHTS = {  # detector -> pair -> loss -> weight (LSHFM's scripts)
    "fasterrcnn": {
        "resnet101_resnet50": {"l2": 7, "lsh": 7, "lshl2": 7},
        "vgg16_vgg11": {"l2": 7, "lsh": 7, "lshl2": 7},
    },
    "retinanet": {
        "resnet101_resnet50": {"l2": 7, "lsh": 7, "lshl2": 7},
        "vgg16_vgg11": {"l2": 7, "lsh": 6, "lshl2": 8},
    },
}


def _terms(config):
    return [(t.name, t.weight, t.params) for t in config.terms]


def _pair(name: str) -> tuple[str, str]:
    for teacher in sorted(ARCHS, key=len, reverse=True):
        if name.startswith(teacher + "_"):
            return teacher, name[len(teacher) + 1 :]
    raise AssertionError(name)


def test_the_recipe_list_is_complete():
    expected = {f"coco/{n}" for n in ("resnet101", "resnet50", "resnet18", "mobilenet_v2")}
    expected |= {f"coco/{pair}/{m}" for pair, methods in COCO.items() for m in methods}
    for detector, pairs in VOC_WEIGHTS.items():
        expected |= {f"voc0712/{detector}/{n}" for n in ("resnet101", "resnet50", "vgg16", "vgg11")}
        expected |= {f"voc0712/{detector}/{p}/{loss}" for p, w in pairs.items() for loss in w}
    assert set(RECIPES) == expected


@pytest.mark.parametrize(("pair", "method"), [(p, m) for p, ms in COCO.items() for m in ms])
def test_table3_recipes(pair, method):
    config = load_config(RECIPES[f"coco/{pair}/{method}"])
    teacher, student = _pair(pair)
    assert config.task == "detection" and config.data.name == "coco"
    assert config.data.train_sizes == list(range(640, 801, 32)) and config.data.test_size == 800
    train = config.train
    assert (train.batch_size, train.lr, train.momentum, train.weight_decay) == (8, 0.01, 0.9, 1e-4)
    short = pair == "resnet50_mobilenet_v2" and method == "kd++"
    assert (train.iterations, train.milestones) == (
        (30010, [20000, 27000]) if short else (180000, [120000, 160000])
    )
    assert train.lr_warmup_iterations == 1000 and not train.nesterov
    assert config.student.arch == f"fasterrcnn_{student}_fpn" and config.student.pretrained
    assert config.teacher.arch == f"fasterrcnn_{teacher}_fpn"
    teacher_run = load_config(RECIPES[f"coco/{teacher}"])
    assert config.teacher.checkpoint == f"{teacher_run.output_dir}/last.pt"
    assert teacher_run.teacher.arch == "" and _terms(teacher_run) == []
    assert _terms(config) == COCO[pair][method]
    assert config.centers.path == f"centers/detection/coco/{teacher}.safetensors"


@pytest.mark.parametrize(
    ("detector", "pair", "loss"),
    [(d, p, loss) for d, ps in VOC_WEIGHTS.items() for p, ws in ps.items() for loss in ws],
)
def test_lshfm_voc_recipes(detector, pair, loss):
    config = load_config(RECIPES[f"voc0712/{detector}/{pair}/{loss}"])
    teacher, student = _pair(pair)
    assert config.data.name == "voc0712" and config.data.train_sizes == list(range(480, 801, 32))
    train = config.train
    assert (train.epochs, train.milestones, train.batch_size) == (24, [18, 22], 8)
    assert train.lr == (0.01 if detector == "fasterrcnn" else 0.005)
    assert config.student.arch == f"{detector}_{student}_fpn"
    assert config.teacher.arch == f"{detector}_{teacher}_fpn"
    teacher_run = load_config(RECIPES[f"voc0712/{detector}/{teacher}"])
    assert config.teacher.checkpoint == f"{teacher_run.output_dir}/last.pt"
    params = {"dims": "mean"} if loss == "l2" else {"hash_functions": 4096, "bias": "zero"}
    assert _terms(config) == [(loss, VOC_WEIGHTS[detector][pair][loss], params)]


SMALL = [
    "device=cpu",
    "data.train_sizes=[48]",
    "data.test_size=48",
    "data.max_size=64",
    "data.num_workers=0",
    "train.batch_size=2",
    "student.pretrained=false",
]
DRY_RUNS = [
    "coco/resnet50_mobilenet_v2/kd++",
    "coco/resnet101_resnet18/reviewkd++",
    "voc0712/fasterrcnn/vgg16_vgg11/lshl2",
    "voc0712/retinanet/resnet101_resnet50/lsh",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detection_recipes")
    return {"coco": write_coco2017(tmp / "coco"), "voc0712": write_voc0712(tmp / "voc"), "tmp": tmp}


def _dry_run(name, folders, tmp_path):
    config = load_config(RECIPES[name])
    classes = 3 if config.data.name == "coco" else 21
    checkpoint = tmp_path / "teacher.pth"
    teacher = create_model(config.teacher.arch, classes)
    torch.save({"model": teacher.state_dict()}, checkpoint)
    overrides = [
        *SMALL,
        f"data.root={folders[config.data.name]}",
        f"output_dir={tmp_path / 'run'}",
        f"teacher.checkpoint={checkpoint}",
    ]
    if any(term.name == "nd" for term in config.terms):
        means = ClassMeans(torch.rand(classes, teacher.embedding_dim) + 0.1)
        overrides.append(f"centers.path={means.save(tmp_path / 'centers.safetensors')}")
    return main(["train", "-c", str(RECIPES[name]), *overrides, "--dry-run"])


@pytest.mark.parametrize("name", DRY_RUNS)
def test_recipes_dry_run_on_tiny_folders(name, folders, tmp_path):
    assert _dry_run(name, folders, tmp_path) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", sorted(n for n, p in RECIPES.items() if load_config(p).teacher.arch)
)
def test_every_distillation_recipe_dry_runs(name, folders, tmp_path):
    assert _dry_run(name, folders, tmp_path) == 0
