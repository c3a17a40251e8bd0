"""The multi-label recipes carry the settings of the authors' scripts
(DoctorKey/LSHFM.multiclassification, experiments/<data>/<network>/*.py), and every stage
and teacher they start from is another recipe's run of the same model."""

from __future__ import annotations

from pathlib import Path

import pytest

from ndkd.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1] / "configs" / "multilabel"
RECIPES = {
    str(p.relative_to(ROOT).with_suffix("")): p
    for p in sorted(ROOT.rglob("*.yaml"))
    if not p.name.startswith("_")
}
DATA = {"voc2007": (16, 1e-5), "coco2014": (32, 1e-4)}  # batch, weight decay
MODELS = {  # recipe model name -> (arch, pool)
    "resnet101": ("torchvision:resnet101", ""),
    "resnet101_gmp": ("torchvision:resnet101", "max"),
    "resnet101_avgmax": ("torchvision:resnet101", "avgmax"),
    "resnet50": ("torchvision:resnet50", ""),
    "resnet50_gmp": ("torchvision:resnet50", "max"),
    "resnet34": ("torchvision:resnet34", ""),
    "resnet18": ("torchvision:resnet18", ""),
    "mobilenet_v2": ("torchvision:mobilenet_v2", ""),
    "mobilenet_v2_gmp": ("torchvision:mobilenet_v2", "max"),
    "vgg19_bn": ("torchvision:vgg19_bn", ""),
}
# pair -> (student embedding_dim, hash functions, {stage-2 loss: (weight, stage-1 loss)})
PAIRS = {
    "voc2007/resnet34_resnet18": (
        512,
        2048,
        {"l2": (1.0, "lshl2"), "lsh": (0.5, "lshl2"), "lshl2": (0.5, "lshl2")},
    ),
    "voc2007/resnet101_mobilenet_v2": (
        2048,
        8192,
        {"l2": (1.0, "lshl2"), "lsh": (0.5, "lshl2"), "lshl2": (0.5, "lshl2"), "kd": (0.001, "l2")},
    ),
    "voc2007/resnet101_resnet50": (
        0,
        8192,
        {"l2": (0.5, None), "lsh": (0.5, None), "lshl2": (0.5, None)},
    ),
    "coco2014/resnet101_resnet50": (
        2048,
        2048,
        {"l2": (3.0, "lshl2"), "lsh": (3.0, "lsh"), "lshl2": (3.0, "l2")},
    ),
    "coco2014/resnet101_mobilenet_v2": (
        2048,
        2048,
        {"l2": (3.0, "lsh"), "lsh": (3.0, "lsh"), "lshl2": (3.0, "lsh")},
    ),
    "coco2014/resnet101_gmp_resnet50_gmp": (
        0,
        2048,
        {"l2": (3.0, None), "lsh": (3.0, None), "lshl2": (3.0, None)},
    ),
    "coco2014/resnet101_gmp_mobilenet_v2_gmp": (
        2048,
        2048,
        {"l2": (3.0, "lshl2"), "lsh": (3.0, "lshl2"), "lshl2": (3.0, "lshl2")},
    ),
    "coco2014/resnet101_gmp_resnet101": (
        0,
        2048,
        {"l2": (3.0, None), "lsh": (3.0, None), "lshl2": (3.0, None)},
    ),
    "coco2014/resnet101_gmp_resnet101_gmp": (
        0,
        2048,
        {"l2": (3.0, None), "lsh": (3.0, None), "lshl2": (3.0, None)},
    ),
}
BASELINES = {
    "voc2007": {name: 60 for name in MODELS if name not in {"resnet50_gmp", "mobilenet_v2_gmp"}},
    "coco2014": {
        "resnet101": 60,
        "resnet101_gmp": 30,
        "resnet101_avgmax": 30,
        "resnet50": 60,
        "resnet50_gmp": 60,
        "mobilenet_v2": 60,
        "mobilenet_v2_gmp": 60,
    },
}


def _pair_models(pair: str) -> tuple[str, str]:
    names = pair.split("/")[1]
    for teacher in sorted(MODELS, key=len, reverse=True):
        if names.startswith(teacher + "_") and names[len(teacher) + 1 :] in MODELS:
            return teacher, names[len(teacher) + 1 :]
    raise AssertionError(pair)


def _model(config: RunConfig, role: str) -> tuple[str, str]:
    spec = getattr(config, role)
    return spec.arch, spec.pool


def _terms(config: RunConfig) -> dict[str, tuple[float, dict]]:
    return {t.name: (t.weight, t.params) for t in config.terms}


def test_the_recipe_list_is_complete():
    expected = {f"{data}/{name}" for data, names in BASELINES.items() for name in names}
    for pair, (_, _, stage2) in PAIRS.items():
        expected |= {f"{pair}/{loss}" for loss in stage2}
        expected |= {f"{pair}/stage1_{first}" for _, first in stage2.values() if first}
    assert set(RECIPES) == expected


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_has_the_schedule_of_its_data_set(name):
    config = load_config(RECIPES[name])
    data = name.split("/")[0]
    assert (config.task, config.data.name, config.data.image_size) == ("multilabel", data, 448)
    assert (config.train.batch_size, config.train.weight_decay) == DATA[data]
    train = config.train
    assert (train.lr, train.momentum, train.nesterov, train.schedule) == (
        0.01,
        0.9,
        False,
        "cosine",
    )
    assert train.lr_warmup_epochs == 0 and train.min_lr == 0
    assert config.output_dir == f"runs/multilabel/{name}/seed0"


@pytest.mark.parametrize(
    ("data", "name"), [(d, n) for d, names in BASELINES.items() for n in names]
)
def test_baselines_train_bce_from_imagenet_weights(data, name):
    config = load_config(RECIPES[f"{data}/{name}"])
    assert _model(config, "student") == MODELS[name] and config.student.pretrained
    assert config.student.embedding_dim == 0 and not config.teacher.arch
    assert _terms(config) == {"bce": (1.0, {})}
    assert config.train.epochs == BASELINES[data][name]


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_pairs_carry_the_scripts_weights_and_chain_their_stages(pair):
    embedding_dim, hashes, stage2 = PAIRS[pair]
    teacher_name, student_name = _pair_models(pair)
    data = pair.split("/")[0]
    teacher_run = load_config(RECIPES[f"{data}/{teacher_name}"])
    for loss, (weight, first) in stage2.items():
        config = load_config(RECIPES[f"{pair}/{loss}"], ["seed=3"])
        assert config.train.epochs == 60 and config.train.trainable == "all"
        assert _model(config, "teacher") == MODELS[teacher_name]
        assert config.teacher.checkpoint == f"{teacher_run.output_dir}/last.pt"
        assert _model(config, "student") == MODELS[student_name]
        assert config.student.embedding_dim == embedding_dim
        params = {
            "l2": {"dims": "mean"},
            "kd": {"temperature": 4.0},
        }.get(loss, {"hash_functions": hashes, "bias": "median"})
        assert _terms(config) == {"bce": (1.0, {}), loss: (weight, params)}
        if first is None:
            assert config.student.pretrained and not config.student.checkpoint
            continue
        stage1 = load_config(RECIPES[f"{pair}/stage1_{first}"], ["seed=3"])
        assert config.student.checkpoint == f"{stage1.output_dir}/last.pt"
        assert not config.student.pretrained
        assert (stage1.student.arch, stage1.student.pool, stage1.student.embedding_dim) == (
            config.student.arch,
            config.student.pool,
            embedding_dim,
        )
        assert stage1.student.pretrained and stage1.train.trainable == "embedding_projection"
        assert stage1.teacher == config.teacher and stage1.train.epochs == 60
        first_params = {"l2": {"dims": "mean"}}.get(
            first, {"hash_functions": hashes, "bias": "median"}
        )
        assert _terms(stage1) == {first: (1.0, first_params)}
