"""The CIFAR-100 recipes of the logit methods that came after the ND paper (KD+LS, DKD+LS,
CTKD, NKD, WTTM), and their ++ variants: each recipe's settings against a table citing its
source, each ++ recipe equal to its recipe plus the nd term at the pair's KD++ weight
(ImageNet's: test_imagenet_recipes.py)."""

from __future__ import annotations

import pytest

from ndkd.config import load_config
from test_published_recipes import (
    BENCHMARK,
    CIFAR,
    PAIRS,
    assert_adds_nd_only,
    assert_schedule,
    term_rows,
)
from test_recipes import PAIRS as KDPP_WEIGHTS  # (kd weight, nd weight) of the KD++ recipes

# sunshangquan/logit-standardization-KD: log file names TYPE,T,S,BASE_TEMP,KD_WEIGHT[,BETA]
# (README); KD's CE weight 0.1 and DKD's 1.0 from mdistiller's cfg.py. No log for
# resnet32x4 -> shufflenetv1: KD takes the defaults (2, 9), DKD the ShuffleNetV2 pair's.
KD_LS = {pair: (2.0, 9.0) for pair in PAIRS} | {"resnet50_cifar_mobilenetv2": (3.0, 1.0)}
DKD_LS = {  # (base temperature, alpha = weight, beta = BETA x weight)
    "resnet56_resnet20": (3.0, 18.0, 36.0),
    "wrn_40_2_wrn_40_1": (2.0, 12.0, 24.0),
    "resnet32x4_resnet8x4": (2.0, 9.0, 72.0),
    "resnet50_cifar_mobilenetv2": (2.0, 15.0, 30.0),
    "resnet32x4_shufflenetv1": (2.0, 9.0, 72.0),
    "resnet32x4_shufflenetv2": (2.0, 9.0, 72.0),
}

# WTTM (Zheng & Yang, ICLR 2024), Appendix A.4: (gamma, beta) of its WTTM rows, Table 8 for
# the same-architecture pairs, Table 9 for the others.
WTTM = {
    "resnet56_resnet20": (0.3, 1.5),
    "wrn_40_2_wrn_40_1": (0.1, 3.0),
    "resnet32x4_resnet8x4": (0.1, 3.0),
    "resnet50_cifar_mobilenetv2": (0.2, 5.0),
    "resnet32x4_shufflenetv1": (0.2, 1.4),
    "resnet32x4_shufflenetv2": (0.4, 16.0),
}


def _expected(method: str, pair: str) -> list[tuple]:
    """(name, weight, params, warmup_epochs, warmup_from) per term."""
    if method == "kd_ls":
        temperature, weight = KD_LS[pair]
        return [
            ("ce", 0.1, {}, 0, 0),
            ("kd", weight, {"temperature": temperature, "standardize": True}, 0, 0),
        ]
    if method == "dkd_ls":
        temperature, alpha, beta = DKD_LS[pair]
        params = {"alpha": alpha, "beta": beta, "temperature": temperature, "standardize": True}
        return [("ce", 1.0, {}, 0, 0), ("dkd", 1.0, params, 20, 1)]
    if method == "wttm":  # the paper's A.4 Tables 8 and 9 (gamma, beta); CE 1 (-r 1)
        gamma, beta = WTTM[pair]
        return [("ce", 1.0, {}, 0, 0), ("wttm", beta, {"gamma": gamma}, 0, 0)]
    if method == "ctkd":  # zhengli97/CTKD scripts/run_cifar_distill.sh: -r 0.1 -a 0.9, global
        return [("ce", 0.1, {}, 0, 0), ("ctkd", 0.9, {"loss": "kd", "mode": "global"}, 0, 0)]
    # yzd-v/cls_KD's one CIFAR-100 config: temp 3, gamma 3.5, CE 1 + NKD 1 (our choice here)
    return [("ce", 1.0, {}, 0, 0), ("nkd", 1.0, {"temperature": 3.0, "gamma": 3.5}, 0, 0)]


METHODS = ("kd_ls", "dkd_ls", "ctkd", "nkd", "wttm")


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("method", METHODS)
def test_recipe_has_its_sources_settings_and_plus_plus_adds_nd(method, pair):
    config = load_config(CIFAR / method / f"{pair}.yaml")
    assert f"{config.teacher.arch}_{config.student.arch}" == pair
    assert term_rows(config) == _expected(method, pair)
    assert_schedule(config, BENCHMARK)
    plus = load_config(CIFAR / f"{method}++" / f"{pair}.yaml")
    nd_weight = KDPP_WEIGHTS[pair][1]
    assert_adds_nd_only(config, plus, nd_weight)
    assert plus.output_dir == f"runs/cifar100/{method}++/{pair}/seed0"
