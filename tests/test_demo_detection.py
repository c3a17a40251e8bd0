"""``ndkd demo --task detection``: the quick run end to end through the CLI (a Faster R-CNN
teacher, its class means over RoIs, detector-loss / KD / KD++ students, the report)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import yaml

from ndkd import ClassMeans
from ndkd.cli import main
from ndkd.demo import QUICK_DETECTION


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--task", "detection", "--quick", "--output", str(output)])
    assert code == 0
    return output, stdout.getvalue()


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_quick_detection_demo_prints_its_plan_and_the_table(quick_demo):
    _, stdout = quick_demo
    lines = stdout.splitlines()
    assert lines[0] == "[1/5] teacher fasterrcnn_resnet34_fpn: detector losses, 2 steps"
    assert "[5/5] student fasterrcnn_resnet18_fpn KD++, seed 0" in lines
    assert any(line.startswith("| student fasterrcnn_resnet18_fpn KD++ ") for line in lines)


def test_quick_detection_demo_reports_its_runs(quick_demo):
    output, _ = quick_demo
    summary = json.loads((output / "results.json").read_text())
    assert summary["dataset"] == "digit_boxes" and summary["seeds"] == [0]
    assert set(summary["methods"]) == {"baseline", "kd", "kd++"}
    for name, numbers in summary["methods"].items():
        last = _records(output / "runs" / name / "seed0")[-1]
        assert last["iteration"] == QUICK_DETECTION.steps
        assert numbers["per_seed"] == [last["test_ap"]]
        assert numbers["test_ap"] == pytest.approx(last["test_ap"])
        assert numbers["test_ap50"] == pytest.approx(last["test_ap50"])
    teacher = _records(output / "runs" / "teacher")[-1]
    assert summary["teacher"]["test_ap"] == pytest.approx(teacher["test_ap"])
    row = next(
        line
        for line in (output / "results.md").read_text().splitlines()
        if line.startswith("| student fasterrcnn_resnet18_fpn KD++ ")
    )
    assert f" {summary['methods']['kd++']['test_ap']:.2f} |" in row
    picture = (output / "detections.png").read_bytes()
    assert picture.startswith(b"\x89PNG") and len(picture) > 10_000


def test_students_add_kd_and_nd_on_roi_rows_to_the_detector_losses(quick_demo):
    output, _ = quick_demo
    runs = output / "runs"
    means = ClassMeans.load(runs / "teacher" / "centers.safetensors")
    assert means.means.shape == (11, 1024)  # background + ten digits, box-head features
    losses = {
        name: {key for key in _records(runs / name / "seed0")[-1] if key.startswith("loss/")}
        for name in ("baseline", "kd", "kd++")
    }
    detector = {"loss/det_objectness", "loss/det_rpn_box_reg", "loss/det_classifier"}
    assert detector <= losses["baseline"] and not {"loss/kd", "loss/nd"} & losses["baseline"]
    assert "loss/kd" in losses["kd"] and "loss/nd" not in losses["kd"]
    assert {"loss/kd", "loss/nd"} <= losses["kd++"]
    config = yaml.safe_load((runs / "kd++" / "seed0" / "config.yaml").read_text())
    assert config["task"] == "detection" and config["data"]["name"] == "digit_boxes"
    assert config["teacher"]["checkpoint"] == str(runs / "teacher" / "last.pt")
    rois = {r: config[r]["options"]["box_batch_size_per_image"] for r in ("teacher", "student")}
    assert rois == {
        "teacher": QUICK_DETECTION.teacher_rois,
        "student": QUICK_DETECTION.student_rois,
    }
