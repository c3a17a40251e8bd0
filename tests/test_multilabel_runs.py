"""Multi-label runs end to end on CPU, from the shipped VOC2007 recipes on a tiny VOC folder:
the teacher baseline, LSHFM's stage 1 (only the feature projection learns) and stage 2 (BCE +
LSHL2 from stage 1), evaluation checked against scikit-learn; and the multi-label demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from ndkd.cli import main
from ndkd.config import load_config
from ndkd.engine.checkpoint import load_checkpoint
from ndkd.experiment import build, trained_student
from ndkd.tasks.multilabel import Batch
from test_voc_coco import write_voc

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "multilabel" / "voc2007"
SMALL = ["device=cpu", "data.image_size=32", "data.num_workers=0", "train.batch_size=4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Teacher, stage 1 and stage 2 of resnet34 -> resnet18, one epoch each (random
    initial weights: ImageNet weights cannot be downloaded here)."""
    tmp = tmp_path_factory.mktemp("voc_runs")
    root = write_voc(tmp / "data").parents[1]
    common = [*SMALL, f"data.root={root}", "train.epochs=1", "student.pretrained=false"]
    teacher = tmp / "teacher"
    stage1, stage2 = tmp / "stage1", tmp / "stage2"
    pair = [*common, f"teacher.checkpoint={teacher / 'last.pt'}"]
    commands = {
        "teacher": ["-c", str(RECIPES / "resnet34.yaml"), *common, f"output_dir={teacher}"],
        "stage1": [
            "-c",
            str(RECIPES / "resnet34_resnet18" / "stage1_lshl2.yaml"),
            *pair,
            f"output_dir={stage1}",
        ],
        "stage2": [
            "-c",
            str(RECIPES / "resnet34_resnet18" / "lshl2.yaml"),
            *pair,
            f"student.checkpoint={stage1 / 'last.pt'}",
            f"output_dir={stage2}",
        ],
    }
    for name, args in commands.items():
        assert main(["train", *args]) == 0, name
    return commands, {"teacher": teacher, "stage1": stage1, "stage2": stage2}


def _record(folder: Path) -> dict:
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


def test_stage_one_trains_only_the_projection(runs):
    commands, folders = runs
    config = load_config(commands["stage1"][1], commands["stage1"][2:])
    initial = build(config, join_process_group=False).student.state_dict()
    trained = load_checkpoint(folders["stage1"] / "last.pt")["model"]
    changed = {k for k, v in initial.items() if not torch.equal(v, trained[k])}
    weights = {k for k in changed if not k.endswith(("running_mean", "running_var", "tracked"))}
    assert weights == {"fc.projection.weight", "fc.projection.bias"}
    assert any(k.endswith("running_mean") for k in changed)  # BN statistics still update
    record = _record(folders["stage1"])
    assert set(k for k in record if k.startswith("loss/")) == {"loss/lshl2"}


def test_stage_two_learns_everything_with_bce_and_lshl2(runs):
    _, folders = runs
    record = _record(folders["stage2"])
    assert record["loss/bce"] > 0 and record["loss/lshl2"] > 0
    assert {f"test_ap/{name}" for name in ("sheep", "bus", "pottedplant")} <= set(record)
    facts = json.loads((folders["stage2"] / "dataset.json").read_text())
    assert facts["ap_definition"] == "interpolated"
    assert (facts["train_samples"], facts["test_samples"]) == (7, 3)
    stage1 = load_checkpoint(folders["stage1"] / "last.pt")["model"]
    stage2 = load_checkpoint(folders["stage2"] / "last.pt")["model"]
    assert not torch.equal(stage1["conv1.weight"], stage2["conv1.weight"])


def test_recorded_map_equals_scikit_learn_on_the_students_scores(runs, capsys):
    commands, folders = runs
    config = load_config(commands["stage2"][1], commands["stage2"][2:])
    student, data, device, _ = trained_student(config, join_process_group=False)
    scores, targets = [], []
    with torch.no_grad():
        for images, batch_targets in data.test_loader:
            batch = Batch(images, batch_targets)
            scores.append(torch.sigmoid(student.eval()(batch.images).logits))
            targets.append(batch_targets)
    score, target = torch.cat(scores).numpy(), torch.cat(targets).numpy()
    per_class = []
    for c in range(target.shape[1]):
        kept = target[:, c] != -1  # difficult-only: ignored
        if (target[kept, c] == 1).any():
            per_class.append(average_precision_score(target[kept, c] == 1, score[kept, c]))
    record = _record(folders["stage2"])
    assert record["test_map_plain"] == pytest.approx(100 * np.mean(per_class), abs=1e-6)
    capsys.readouterr()
    assert main(["eval", *commands["stage2"]]) == 0
    assert f"test mAP {record['test_map']:.2f}%" in capsys.readouterr().out


def test_a_single_label_term_is_refused_for_multi_label_targets(runs, capsys):
    commands, folders = runs
    args = [*commands["stage2"][:-1], f"output_dir={folders['stage2'].parent / 'ce'}"]
    assert main(["train", *args, "terms=[{name: ce}]", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'ce' reads one class label per image" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "out"
    code = main(["demo", "--task", "multilabel", "--quick", "--output", str(output)])
    assert code == 0
    return output


def test_quick_multilabel_demo_reports_its_runs(quick_demo, capsys):
    summary = json.loads((quick_demo / "results.json").read_text())
    assert summary["dataset"] == "digit_canvas" and summary["seeds"] == [0, 1]
    assert set(summary["methods"]) == {"baseline", "l2", "lshl2"}
    for name, numbers in summary["methods"].items():
        finals = [
            _record(quick_demo / "runs" / name / f"seed{seed}")["test_map"] for seed in (0, 1)
        ]
        assert numbers["test_map"] == pytest.approx(np.mean(finals))
        assert numbers["per_seed"] == finals
    assert (quick_demo / "map.png").read_bytes().startswith(b"\x89PNG")
    table = (quick_demo / "results.md").read_text()
    assert "| student resnet8 BCE + LSHL2 |" in table
