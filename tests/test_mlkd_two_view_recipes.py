"""MLKD's published two-view protocol on CIFAR-100 (configs/cifar100/mlkd_two_view{,++}/):
each recipe's numbers against a table read from the authors' code, each ++ recipe equal to
its recipe plus nd on the weak view at the pair's KD++ weight, and the protocol kept in a
folder of its own."""

from __future__ import annotations

import pytest

from ndkd.config import load_config
from test_published_recipes import CIFAR, PAIRS, assert_adds_nd_only, term_rows
from test_recipes import PAIRS as KDPP_WEIGHTS  # (kd weight, nd weight) of the KD++ recipes

# Jin-Ying/Multi-Level-Logit-Distillation, configs/cifar100/ours/<file>.yaml (SOLVER):
# pair -> (file, LR, epochs); every file: BATCH_SIZE 64, LR_DECAY_STAGES [150, 180, 210],
# LR_DECAY_RATE 0.1, WEIGHT_DECAY 0.0005, MOMENTUM 0.9, TYPE SGD (no Nesterov in
# mdistiller/engine/trainer.py), TRAINER ours (AugTrainer: two views).
SOURCES = {
    "resnet56_resnet20": ("res56_res20", 0.025, 240),
    "wrn_40_2_wrn_40_1": ("wrn40_2_wrn_40_1", 0.025, 240),
    "resnet32x4_resnet8x4": ("res32x4_res8x4", 0.025, 240),
    "resnet50_cifar_mobilenetv2": ("res50_mv2", 0.01, 480),
    "resnet32x4_shufflenetv1": ("res32x4_shuv1", 0.01, 960),
    "resnet32x4_shufflenetv2": ("res32x4_shuv2", 0.01, 960),
}
# mdistiller/engine/cfg.py: KD.LOSS.CE_WEIGHT 0.1, KD_WEIGHT 0.9, KD.TEMPERATURE 4;
# mdistiller/distillers/KD_ours.py: CE on both views; weak view: KD, batch (bc) and class
# (cc) levels at T 4 (cfg), 3, 5, 2, 6, masked; strong view: KD at T 4, 3, 5; and, a slip
# of their loss_kd_strong, KD of the WEAK view at T 2 and 6, unmasked.
TERMS = [
    ("ce", 0.1, {}, 0, 0),
    ("ce@strong", 0.1, {}, 0, 0),
    ("mlkd", 0.9, {"temperatures": [4, 3, 5, 2, 6], "mask": "scale"}, 0, 0),
    (
        "mlkd@strong",
        0.9,
        {"temperatures": [4, 3, 5], "mask": "none", "levels": ["instance"]},
        0,
        0,
    ),
    ("mlkd@weak", 0.9, {"temperatures": [2, 6], "mask": "none", "levels": ["instance"]}, 0, 0),
]


@pytest.mark.parametrize("pair", PAIRS)
def test_two_view_recipe_has_the_authors_settings_and_plus_plus_adds_nd(pair):
    source, lr, epochs = SOURCES[pair]
    path = CIFAR / "mlkd_two_view" / f"{pair}.yaml"
    assert f"configs/cifar100/ours/{source}.yaml" in path.read_text()
    config = load_config(path)
    assert f"{config.teacher.arch}_{config.student.arch}" == pair
    assert config.data.strong_view == "mlkd" and config.data.name == "cifar100"
    assert term_rows(config) == TERMS
    train = config.train
    assert (train.batch_size, train.lr, train.epochs) == (64, lr, epochs)
    assert (train.optimizer, train.momentum, train.nesterov) == ("sgd", 0.9, False)
    assert (train.weight_decay, train.schedule) == (5e-4, "multistep")
    assert (train.milestones, train.gamma, train.lr_warmup_epochs) == ([150, 180, 210], 0.1, 0)
    assert config.output_dir == f"runs/cifar100/mlkd_two_view/{pair}/seed0"
    plus = load_config(CIFAR / "mlkd_two_view++" / f"{pair}.yaml")
    assert_adds_nd_only(config, plus, KDPP_WEIGHTS[pair][1])
    assert plus.output_dir == f"runs/cifar100/mlkd_two_view++/{pair}/seed0"


def test_the_protocol_stays_in_its_own_folders():
    """No one-view CIFAR-100 recipe has two views, and no two-view recipe sits elsewhere."""
    for path in CIFAR.rglob("*.yaml"):
        if path.name.startswith("_"):
            continue
        two_view = path.parent.name in ("mlkd_two_view", "mlkd_two_view++")
        assert bool(load_config(path).data.strong_view) == two_view, path
