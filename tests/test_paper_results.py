"""The published numbers of ``ndkd analyze``'s paper column: every entry names a shipped
recipe and its task's primary metric, and the values agree with the paper's own gains."""

from __future__ import annotations

from pathlib import Path

import pytest

from ndkd.analysis.paper import paper_result, paper_results
from ndkd.analysis.runs import TASK_METRICS
from ndkd.config import load_config
from test_published_recipes import PAIRS  # Table 1's column order

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The green superscripts of Table 1: each ++ row minus its plain row, as printed, except one:
# KD++ on resnet50 -> mobilenetv2 prints +2.35 over KD, but its cells are 70.10 and 67.65,
# +2.45, which is also the gain Table 4 (d) prints for the same two numbers.
GAINS = {
    "kd": (1.87, 1.05, 2.21, 2.45, 1.38, 1.97),
    "dist": (0.74, 0.58, 0.34, 0.63, 0.37, 0.56),
    "dkd": (0.19, 0.21, 0.84, 0.47, 0.66, 0.42),
    "reviewkd": (0.16, 0.57, 0.44, 0.56, 0.23, 0.15),
}
# A few cells read again from the paper: recipe -> value.
CELLS = {
    "cifar100/teacher/resnet32x4": 79.42,
    "cifar100/baseline/mobilenetv2": 64.60,
    "cifar100/ofd/resnet32x4_shufflenetv2": 76.82,
    "cifar100/crd/resnet56_resnet20": 71.16,
    "ablations/table4/infonce_sifn/resnet56_resnet20": 71.04,
    "ablations/table5/layer2/resnet32x4_shufflenetv1": 75.72,
    "imagenet/dkd++/resnet50_mobilenet_v1": 72.63,
    "detection/coco/resnet101_resnet18/reviewkd++": 37.43,
    "cifar100/wttm/resnet32x4_shufflenetv2": 76.55,  # WTTM's Table 3
    "imagenet/beyond/wttm/resnet34_resnet18": 72.19,  # WTTM's Table 5
}


@pytest.mark.parametrize("recipe", sorted(paper_results()))
def test_every_entry_names_a_shipped_recipe_and_its_primary_metric(recipe):
    path = CONFIGS / f"{recipe}.yaml"
    assert path.is_file(), recipe
    config = load_config(path)
    found = paper_results()[recipe]
    assert found.metric == TASK_METRICS[config.task][0].key
    assert paper_result(config, found.metric) == found
    assert 0 < found.value < 100 and "Table" in found.source


@pytest.mark.parametrize("method", sorted(GAINS))
def test_plus_plus_rows_exceed_their_plain_rows_by_the_printed_gains(method):
    results = paper_results()
    for pair, gain in zip(PAIRS, GAINS[method]):
        plus = results[f"cifar100/{method}++/{pair}"].value
        plain = results[f"cifar100/{method}/{pair}"].value
        assert plus - plain == pytest.approx(gain, abs=1e-6), (method, pair)


def test_cells_read_again_from_the_paper():
    assert {name: paper_results()[name].value for name in CELLS} == CELLS


def test_controlled_and_unknown_recipes_have_no_paper_number():
    controlled = load_config(CONFIGS / "cifar100/controlled/kd/resnet56_resnet20.yaml")
    assert paper_result(controlled, "test_top1") is None
    kdpp = load_config(CONFIGS / "cifar100/kd++/resnet56_resnet20.yaml")
    assert paper_result(kdpp, "test_top1").value == 72.53
    assert paper_result(kdpp, "test_map") is None  # another metric than the published one
