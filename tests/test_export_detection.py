"""``ndkd export`` of detection students: the exported model is torchvision's inference
contract (images of any size in, per-image boxes in their own pixels, scores, labels out),
equal to what the run's evaluation scores; each format loads back and gives the PyTorch
student's detections; the check matches detections and refuses different ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ndkd.cli import main
from ndkd.config import load_config
from ndkd.experiment import trained_student
from ndkd.export import export_run
from ndkd.export.detector import Match, inference_detector, match_detections
from ndkd.export.student import ATOL, RTOL, jit_load
from ndkd.models.detection import detect
from test_detection_data import write_coco2017
from test_detection_runs import _config as detection_config

pytest.importorskip("onnxruntime")

ARCHS = ("fasterrcnn_resnet18_fpn", "retinanet_resnet18_fpn")
# every candidate is kept (no score threshold), so the check compares up to 100 per image
KEEP_ALL = {"fasterrcnn_resnet18_fpn": "box_score_thresh", "retinanet_resnet18_fpn": "score_thresh"}


def _train(folder: Path, root: Path, arch: str) -> Path:
    """A one-epoch run of ``arch`` on the tiny COCO folder (test_detection_runs' config)."""
    output = folder / arch
    student = {"arch": arch, "options": {KEEP_ALL[arch]: 0.0}}
    config = detection_config(folder / f"{arch}.yaml", root, output, [], student=student)
    assert main(["train", "-c", config]) == 0
    return output


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("export_detection")
    root = write_coco2017(tmp / "coco")
    return {arch: _train(tmp, root, arch) for arch in ARCHS}


def _student_and_images(run_dir: Path):
    config = load_config(run_dir / "config.yaml")
    student, data, _, task = trained_student(config, run_dir / "last.pt", join_process_group=False)
    images = [image for batch_images, _ in data.test_loader for image in batch_images]
    return student.eval(), task, images


def _assert_same(found: list[dict], expected: list[dict]) -> int:
    """Every image's detections match (order aside, ties at a score cut allowed: the
    untrained students' scores tie a lot); returns how many were compared."""
    assert len(found) == len(expected)
    for out, ref in zip(found, expected):
        match = match_detections(out, ref)
        assert match.ok, match
    return sum(len(ref["boxes"]) for ref in expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_inference_detector_is_what_the_evaluation_scores(runs, arch):
    student, task, images = _student_and_images(runs[arch])
    detector = inference_detector(student, task.eval_transform)
    assert type(detector).__name__ in ("FasterRCNN", "RetinaNet")
    config = load_config(runs[arch] / "config.yaml")
    _, data, _, _ = trained_student(config, runs[arch] / "last.pt", join_process_group=False)
    expected = []
    with torch.no_grad():
        exported = []
        for raw in data.test_loader:  # the same batches: padding depends on the batch
            exported += detector(list(raw[0]))
            batch = task.to_device(raw, torch.device("cpu"), None)
            found = detect(student, batch.images)
            sizes = batch.images.image_sizes, batch.original_sizes
            expected += task.eval_transform.postprocess(found, *sizes)
    assert len(expected) == len(exported) == 3
    for out, ref in zip(exported, expected):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)
    assert sum(len(d["boxes"]) for d in exported) > 0
    # boxes are in each input image's own pixels
    for out, image in zip(exported, images):
        height, width = image.shape[-2:]
        assert float(out["boxes"][:, [0, 2]].max()) <= width
        assert float(out["boxes"][:, [1, 3]].max()) <= height


@pytest.mark.filterwarnings("ignore:.*always returns a")
@pytest.mark.parametrize("arch", ARCHS)
def test_torchscript_is_scripted_and_takes_any_image_size(runs, arch, tmp_path):
    result = export_run(runs[arch], "torchscript", output=tmp_path / "ts")
    assert result.passed and result.exporter == "torch.jit.script"
    assert result.compared.endswith("detections") and result.samples == 3
    student, task, images = _student_and_images(runs[arch])
    model = jit_load(result.model_file)
    resized = [torch.nn.functional.interpolate(im[None], size=(37, 91))[0] for im in images]
    detector = inference_detector(student, task.eval_transform)
    with torch.no_grad():
        assert _assert_same(model(resized), detector(resized)) > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_runs_in_onnxruntime_one_image_of_any_size(runs, arch, tmp_path):
    import onnxruntime

    result = export_run(runs[arch], "onnx", output=tmp_path / "onnx")
    assert result.passed and result.exporter == "torch.onnx.export(dynamo=False)"
    student, task, images = _student_and_images(runs[arch])
    detector = inference_detector(student, task.eval_transform)
    session = onnxruntime.InferenceSession(str(result.model_file))
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels"]
    image = torch.nn.functional.interpolate(images[0][None], size=(71, 45))[0]
    boxes, scores, labels = session.run(None, {"image": image.numpy()})
    found = {
        "boxes": torch.from_numpy(boxes),
        "scores": torch.from_numpy(scores),
        "labels": torch.from_numpy(labels),
    }
    with torch.no_grad():
        assert _assert_same([found], detector([image])) > 0


def test_safetensors_loads_into_create_model_with_the_cards_transform(runs, tmp_path):
    from safetensors.torch import load_file
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from ndkd.models import create_model

    arch = ARCHS[0]
    result = export_run(runs[arch], "safetensors", output=tmp_path / "st")
    card = (result.folder / "README.md").read_text()
    assert f"model = create_model({arch!r}, 3, box_score_thresh=0.0)" in card
    assert "GeneralizedRCNNTransform(64, 96, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])" in card
    assert "pipeline_tag: object-detection" in card
    assert "(1: car, 2: dog)" in card
    model = create_model(arch, 3, box_score_thresh=0.0)
    model.load_state_dict(load_file(result.model_file), strict=True)
    model.transform = GeneralizedRCNNTransform(64, 96, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    student, task, images = _student_and_images(runs[arch])
    detector = inference_detector(student, task.eval_transform)
    with torch.no_grad():
        assert _assert_same(model.eval()(images), detector(images)) > 0
    metrics = [json.loads(line) for line in (runs[arch] / "metrics.jsonl").read_text().splitlines()]
    assert f"| {metrics[-1]['test_ap']:.2f} |" in card


def test_cli_exports_a_detection_run(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(runs[ARCHS[0]]), "--format", "torchscript", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "check passed" in printed and "detections of 3 test images" in printed


def _detections(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.as_tensor(scores, dtype=torch.float32),
        "labels": torch.as_tensor(labels, dtype=torch.long),
    }


def test_matching_ignores_order_but_not_values_labels_or_counts():
    reference = _detections([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.5], [1, 2])
    swapped = _detections([[5, 5, 20, 20], [0, 0, 10, 10]], [0.5, 0.9], [2, 1])
    assert match_detections(swapped, reference) == Match(0.0, 0, True)
    bound = ATOL + RTOL * 10
    within = _detections([[5, 5, 20, 20], [0, 0, 10, 10 + 0.5 * bound]], [0.5, 0.9], [2, 1])
    assert match_detections(within, reference).ok
    shifted = _detections([[5, 5, 20, 20], [0, 0, 10, 10.01]], [0.5, 0.9], [2, 1])
    match = match_detections(shifted, reference)
    assert not match.ok and match.max_abs_diff == pytest.approx(0.0, abs=1e-6)
    relabelled = _detections([[5, 5, 20, 20], [0, 0, 10, 10]], [0.5, 0.9], [2, 2])
    assert not match_detections(relabelled, reference).ok
    # the lowest-scoring detection is checked like any other (no tie at that score)
    lowest_wrong = _detections([[0, 0, 10, 10], [1, 1, 2, 2]], [0.9, 0.5], [1, 2])
    assert not match_detections(lowest_wrong, reference).ok
    assert not match_detections(_detections([[0, 0, 10, 10]], [0.9], [1]), reference).ok
    extra = _detections([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]], [0.9, 0.5, 0.5], [1, 2, 2])
    assert not match_detections(extra, reference).ok  # the reference has no tie at 0.5
    # one detection each, wrong box and label: nothing to excuse it
    one = _detections([[0, 0, 10, 10]], [0.7], [1])
    assert match_detections(_detections([[3, 3, 4, 4]], [0.7], [2]), one) == Match(
        math.inf, 2, False
    )
    # a duplicate cannot stand in for a missing detection (matching both ways)
    doubled = _detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.6], [1, 1])
    other = _detections([[0, 0, 10, 10], [0, 0, 10, 30]], [0.5, 0.6], [1, 1])
    assert not match_detections(doubled, other).ok
    assert match_detections(_detections([], [], []), reference) == Match(math.inf, 0, False)
    empty = _detections([], [], [])
    assert match_detections(empty, empty) == Match(0.0, 0, True)


def test_only_a_few_candidates_tied_at_the_cut_may_differ():
    """The RetinaNet case seen here: 108 detections, many tied at the lowest score; the
    export kept one more candidate of that score (109)."""
    boxes = [[i, i, i + 5, i + 5] for i in range(100)]
    scores = [0.9 - 0.001 * i for i in range(90)] + [0.01] * 10
    reference = _detections(boxes, scores, [1] * 100)
    more = _detections([*boxes, [200, 200, 205, 205]], [*scores, 0.01], [1] * 101)
    assert match_detections(more, reference) == Match(0.0, 1, True)
    swapped = _detections([*boxes[:99], [300, 300, 305, 305]], scores, [1] * 100)
    assert match_detections(swapped, reference) == Match(0.0, 2, True)
    # but not many of them: 1 % of a side (at least one)
    many = _detections(
        [*boxes[:97], *[[300 + i, 300, 305 + i, 305] for i in range(3)]], scores, [1] * 100
    )
    assert not match_detections(many, reference).ok
    # all scores equal and every box wrong: refused
    flat = _detections(boxes[:10], [0.5] * 10, [1] * 10)
    wrong = _detections([[b[0] + 50, *b[1:]] for b in boxes[:10]], [0.5] * 10, [1] * 10)
    assert not match_detections(wrong, flat).ok


def _shift_first_image(found: list[dict]) -> None:
    found[0]["boxes"] = found[0]["boxes"] + 0.5


def _relabel_each_best(found: list[dict]) -> None:
    for detections in found:
        best = detections["scores"].argmax()
        detections["labels"][best] = 3 - detections["labels"][best]  # 1 <-> 2


def _drop_each_best(found: list[dict]) -> None:
    for detections in found:
        keep = torch.arange(len(detections["scores"])) != detections["scores"].argmax()
        for key in ("boxes", "scores", "labels"):
            detections[key] = detections[key][keep]


@pytest.mark.parametrize("corrupt", [_shift_first_image, _relabel_each_best, _drop_each_best])
def test_a_differing_export_is_refused_and_nothing_written(
    corrupt, runs, tmp_path, monkeypatch, capsys
):
    import ndkd.export.detector as detector_module

    real = detector_module.DetectorExport.read

    def corrupted(self, fmt, path, inputs):
        found = real(self, fmt, path, inputs)
        corrupt(found)
        return found

    monkeypatch.setattr(detector_module.DetectorExport, "read", corrupted)
    out = tmp_path / "bad"
    assert main(["export", str(runs[ARCHS[0]]), "--format", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs from the PyTorch student" in err[0]
    assert "detections" in err[0] and "of 3 test images" in err[0] and not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]
