"""The two CIFAR-100 recipe families: every published comparison recipe carries its own
method's settings (each table below cites its source), and every controlled recipe is its ++
recipe without the nd term and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from ndkd.config import load_config

CIFAR = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
PAIRS = (  # Table 1's column order
    "resnet56_resnet20",
    "wrn_40_2_wrn_40_1",
    "resnet32x4_resnet8x4",
    "resnet50_cifar_mobilenetv2",
    "resnet32x4_shufflenetv1",
    "resnet32x4_shufflenetv2",
)
LIGHT = ("mobilenetv2", "shufflenetv1", "shufflenetv2")

# HobbitLong/RepDistiller train_student.py: batch 64, 240 epochs, LR 0.05 (0.01 for
# MobileNetV2/ShuffleV1/ShuffleV2), decay 0.1 at 150/180/210, WD 5e-4, momentum 0.9, SGD
# without nesterov; mdistiller's SOLVER blocks and DIST_KD's dist_cifar.yaml are the same.
BENCHMARK = {"batch_size": 64, "nesterov": False, "lr": 0.05, "light_lr": 0.01}
# dvlab-research/ReviewKD CIFAR-100/train.py: batch 128, LR 0.1 (0.02 for shuffle/mobile),
# SGD nesterov, the same decay, WD and epochs.
REVIEWKD_SCHEDULE = {"batch_size": 128, "nesterov": True, "lr": 0.1, "light_lr": 0.02}

# (name, weight, params, warmup_epochs, warmup_from) per term.
KD = [("ce", 0.1, {}, 0, 0), ("kd", 0.9, {"temperature": 4.0}, 0, 0)]  # run_cifar_distill.sh
DIST = [  # DIST_KD dist_cifar.yaml: ori 1, kd 2, dist_t4 -> DIST(beta=1, gamma=1, tau=4)
    ("ce", 1.0, {}, 0, 0),
    ("dist", 2.0, {"beta": 1.0, "gamma": 1.0, "temperature": 4.0}, 0, 0),
]
DKD_BETA = {"resnet56_resnet20": 2.0, "wrn_40_2_wrn_40_1": 6.0}  # mdistiller dkd/*.yaml; else 8
REVIEWKD_WEIGHT = {  # ReviewKD CIFAR-100/script/reviewKD.sh; mobilenetv2: no script, our 5.0
    "resnet56_resnet20": 0.6,
    "wrn_40_2_wrn_40_1": 5.0,
    "resnet32x4_resnet8x4": 5.0,
    "resnet50_cifar_mobilenetv2": 5.0,
    "resnet32x4_shufflenetv1": 5.0,
    "resnet32x4_shufflenetv2": 8.0,
}
FEATURE_TERMS = {  # RepDistiller run_cifar_distill.sh (-r 1 -a 0 -b ...), mdistiller cfg
    "fitnet": [("ce", 1.0, {}, 0, 0), ("fitnet", 100.0, {"hint_stage": 2}, 0, 0)],
    "rkd": [
        ("ce", 1.0, {}, 0, 0),
        ("rkd", 1.0, {"distance_weight": 25.0, "angle_weight": 50.0}, 0, 0),
    ],
    "pkt": [("ce", 1.0, {}, 0, 0), ("pkt", 30000.0, {}, 0, 0)],
    "crd": [
        ("ce", 1.0, {}, 0, 0),
        (
            "crd",
            0.8,
            {"feat_dim": 128, "negatives": 16384, "temperature": 0.07, "momentum": 0.5},
            0,
            0,
        ),
    ],
    "ofd": [("ce", 1.0, {}, 0, 0), ("ofd", 0.001, {}, 0, 0)],  # mdistiller OFD cfg
}
TEACHER_BN_TRAIN = {"ofd", "reviewkd"}  # mdistiller OFD.train(), overhaul t_net.train();
# ReviewKD's train.py never calls teacher.eval()


def _expected_terms(method: str, pair: str) -> list[tuple]:
    if method == "kd":
        return KD
    if method == "dist":
        return DIST
    if method == "dkd":
        params = {"alpha": 1.0, "beta": DKD_BETA.get(pair, 8.0), "temperature": 4.0}
        return [("ce", 1.0, {}, 0, 0), ("dkd", 1.0, params, 20, 1)]  # mdistiller: epochs from 1
    if method == "reviewkd":  # train.py: min(1, epoch / 20) with epochs from 0
        return [("ce", 1.0, {}, 0, 0), ("reviewkd", REVIEWKD_WEIGHT[pair], {}, 20, 0)]
    return FEATURE_TERMS[method]


PUBLISHED = ("kd", "dkd", "dist", "reviewkd", *FEATURE_TERMS)


def term_rows(config) -> list[tuple]:
    """``(name, weight, params, warmup_epochs, warmup_from)`` of each of ``config``'s terms."""
    return [(t.name, t.weight, t.params, t.warmup_epochs, t.warmup_from) for t in config.terms]


def assert_schedule(config, schedule: dict) -> None:
    """``config`` trains 240 epochs on ``schedule`` (LR, batch, Nesterov; the light LR for
    the MobileNetV2 and ShuffleNet students), SGD momentum 0.9, weight decay 5e-4 on every
    parameter, x0.1 at 150/180/210, no LR warm-up."""
    train = config.train
    light = config.student.arch in LIGHT
    assert train.lr == (schedule["light_lr"] if light else schedule["lr"])
    assert (train.batch_size, train.nesterov) == (schedule["batch_size"], schedule["nesterov"])
    assert (train.epochs, train.milestones, train.gamma) == (240, [150, 180, 210], 0.1)
    assert (train.momentum, train.weight_decay, train.decay_norms_and_biases) == (0.9, 5e-4, True)
    assert train.lr_warmup_epochs == 0


def assert_adds_nd_only(plain, plus, nd_weight: float) -> None:
    """``plus`` is ``plain`` with the ``nd`` term at ``nd_weight`` appended, reading the
    same class means; only its terms, output folder and recipe name differ."""
    assert term_rows(plus) == [*term_rows(plain), ("nd", nd_weight, {}, 0, 0)]
    assert plus.centers == plain.centers and plus.centers.path
    mine, theirs = plain.to_dict(), plus.to_dict()
    for key in ("terms", "output_dir", "recipe"):
        mine.pop(key), theirs.pop(key)
    assert mine == theirs


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("method", PUBLISHED)
def test_published_recipe_has_its_sources_settings(method, pair):
    config = load_config(CIFAR / method / f"{pair}.yaml")
    assert f"{config.teacher.arch}_{config.student.arch}" == pair
    assert term_rows(config) == _expected_terms(method, pair)
    assert_schedule(config, REVIEWKD_SCHEDULE if method == "reviewkd" else BENCHMARK)
    assert config.teacher.bn == ("train" if method in TEACHER_BN_TRAIN else "eval")
    assert config.output_dir == f"runs/cifar100/{method}/{pair}/seed0"
    assert config.recipe == f"cifar100/{method}/{pair}"


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("method", ("kd", "dkd", "dist", "reviewkd"))
def test_controlled_recipe_is_its_plus_plus_recipe_without_nd(method, pair):
    plus = load_config(CIFAR / f"{method}++" / f"{pair}.yaml")
    plain = load_config(CIFAR / "controlled" / method / f"{pair}.yaml")
    assert_adds_nd_only(plain, plus, plus.terms[-1].weight)
    assert plain.output_dir == f"runs/cifar100/controlled/{method}/{pair}/seed0"


def test_every_cifar_recipe_family_is_covered():
    families = {p.parent.relative_to(CIFAR).as_posix() for p in CIFAR.rglob("[!_]*.yaml")}
    published = set(PUBLISHED) | {f"controlled/{m}" for m in ("kd", "dkd", "dist", "reviewkd")}
    plus = {"kd++", "dkd++", "dist++", "reviewkd++"}  # tests/test_recipes.py and others
    beyond = {f"{m}{v}" for m in ("kd_ls", "dkd_ls", "ctkd", "nkd", "wttm") for v in ("", "++")}
    two_view = {"mlkd_two_view", "mlkd_two_view++"}  # tests/test_mlkd_two_view_recipes.py
    assert families == published | plus | beyond | two_view | {"teacher", "baseline"}
