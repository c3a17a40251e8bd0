"""Detection: Faster R-CNN RoI rows for the loss terms (the teacher's box head on the
student's RoIs), the detector losses against torchvision's own forward, COCO AP and VOC07
mAP against independent computations, class means over sampled RoIs, the builders and
torchvision's state dicts. Tiny: ResNet-18 FPN detectors on 2-3 images of ~64 px, few
proposals."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import sys
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import box_iou
from torchvision.ops.misc import FrozenBatchNorm2d

from ndkd.centers import ClassMeans
from ndkd.config import TermConfig
from ndkd.methods import BuildContext, Distiller, StepOutputs, build_term
from ndkd.models import create_model, detection, list_models, load_checkpoint
from ndkd.models import pretrained as weights_source
from ndkd.models.adapter import final_linear
from ndkd.models.detection import CLASSIFIER, backbone_features, roi_outputs, training_rois
from ndkd.models.fold import fold_batchnorm
from ndkd.tasks import detection as detection_task
from ndkd.tasks.detection import COCO_KEYS, DetectionTask

CPU = torch.device("cpu")
CLASSES = ["__background__", "a", "b", "c"]
CATEGORY_IDS = [0, 3, 7, 9]  # label -> the ground truth's category id
TRAIN_SIZES, TEST_SIZE, MAX_SIZE = [56, 64], 64, 100
OPTIONS = {
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
}
DETECTOR_LOSSES = {"det_objectness", "det_rpn_box_reg", "det_classifier", "det_box_reg"}


def _raw_batch(seed: int = 0) -> tuple[tuple, tuple]:
    """Two images of different sizes with boxes of every class (the loaders' batch). Both
    are resized to the same height: torchvision's RoI pooling infers the FPN levels' scales
    once, from the first batch's padded heights."""
    generator = torch.Generator().manual_seed(seed)
    images = (
        torch.rand(3, 64, 64, generator=generator),
        torch.rand(3, 48, 64, generator=generator),
    )
    targets = (
        {
            "boxes": torch.tensor([[5.0, 5.0, 25.0, 35.0], [30.0, 20.0, 60.0, 50.0]]),
            "labels": torch.tensor([1, 3]),
            "image_id": torch.tensor(1),
        },
        {
            "boxes": torch.tensor([[10.0, 10.0, 40.0, 30.0]]),
            "labels": torch.tensor([2]),
            "image_id": torch.tensor(2),
        },
    )
    return images, targets


def _truth() -> dict:
    """COCO-format ground truth of :func:`_raw_batch`'s images."""
    boxes = [(1, 3, [5, 5, 20, 30]), (1, 9, [30, 20, 30, 30]), (2, 7, [10, 10, 30, 20])]
    return {
        "images": [{"id": 1, "width": 64, "height": 64}, {"id": 2, "width": 64, "height": 48}],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3]}
            | {"iscrowd": 0}
            for k, (i, c, b) in enumerate(boxes)
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS[1:], CLASSES[1:])],
    }


def _task(metric: str = "coco", truth: dict | None = None) -> DetectionTask:
    truth = _truth() if truth is None else truth
    return DetectionTask(CLASSES, truth, CATEGORY_IDS, TRAIN_SIZES, TEST_SIZE, MAX_SIZE, metric)


def detector_pair(arch: str, options: dict) -> tuple[nn.Module, nn.Module]:
    """A student and a (differently initialised) frozen teacher of ``arch``, 3 classes."""
    torch.manual_seed(0)
    student = create_model(arch, len(CLASSES), **options)
    teacher = create_model(arch, len(CLASSES), **options)
    return student, teacher.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def detectors() -> tuple[nn.Module, nn.Module]:
    """A student and a (differently initialised) teacher, ResNet-18 FPN, 3 classes."""
    return detector_pair("fasterrcnn_resnet18_fpn", OPTIONS)


class _Recorder(nn.Module):
    """A "method" that keeps the rows it is given and returns no term."""

    def forward(self, rows: StepOutputs, epoch: int) -> dict[str, torch.Tensor]:
        self.rows = rows
        return {}


def _step(task, student, teacher, method, batch):
    """The trainer's step: teacher forward without gradients, then student and losses."""
    with torch.no_grad():
        teacher_out = task.forward(teacher, batch)
    student_out = task.forward(student.train(), batch)
    return student_out, teacher_out, task.step_losses(method, student_out, teacher_out, batch, 0)


# --- rows, losses, terms ---------------------------------------------------------------


def test_rows_are_the_student_rois_through_both_box_heads(detectors):
    student, teacher = detectors
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    seen = []
    hook = teacher.roi_heads.box_roi_pool.register_forward_hook(
        lambda module, args, out: seen.append([p.clone() for p in args[1]])
    )
    recorder = _Recorder()
    try:
        student_out, _, losses = _step(task, student, teacher, recorder, batch)
    finally:
        hook.remove()
    rows, task_rows = student_out.rows, recorder.rows
    counts = [len(p) for p in rows.proposals]
    total = sum(counts)
    assert all(0 < n <= OPTIONS["box_batch_size_per_image"] for n in counts)
    assert task_rows.student.logits.shape == (total, len(CLASSES))
    assert task_rows.student.embedding.shape == (total, 1024)
    assert task_rows.teacher.logits.shape == (total, len(CLASSES))
    assert task_rows.teacher.embedding.shape == (total, 1024)
    assert task_rows.labels.shape == (total,) and task_rows.labels.dtype == torch.int64
    # the ground-truth boxes join the proposals: every class has a positive RoI
    assert set(task_rows.labels.tolist()) == {0, 1, 2, 3}
    # a RoI's label: the class of its best box at IoU >= 0.5, else the background
    for proposals, labels, target in zip(rows.proposals, rows.labels.split(counts), batch.targets):
        best, index = box_iou(proposals, target["boxes"]).max(dim=1)
        assert torch.equal(labels, torch.where(best >= 0.5, target["labels"][index], 0))
    assert [m.shape[-2] for m in task_rows.student.stages] == [16, 8, 4, 2, 1]
    # the teacher's box head saw exactly the student's proposals
    assert len(seen) == 1 and len(seen[0]) == 2
    assert all(torch.equal(a, b) for a, b in zip(seen[0], rows.proposals))
    with torch.no_grad():
        features = backbone_features(teacher, batch.images)
        expected = roi_outputs(teacher, features, rows.proposals, batch.images.image_sizes)
    torch.testing.assert_close(task_rows.teacher.logits, expected.logits)
    torch.testing.assert_close(task_rows.teacher.embedding, expected.embedding)
    torch.testing.assert_close(student_out.teacher.embedding, expected.embedding)
    assert not task_rows.teacher.embedding.requires_grad
    assert task_rows.student.embedding.requires_grad
    assert set(losses) == DETECTOR_LOSSES
    assert all(torch.isfinite(value) and value.requires_grad for value in losses.values())


def test_meter_counts_images_rois_accuracy_and_norms(detectors):
    student, teacher = detectors
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    student_out, teacher_out, _ = _step(task, student, teacher, _Recorder(), batch)
    meter = task.train_meter(CPU, with_teacher=True)
    meter.update(student_out, teacher_out, batch)
    totals = meter.totals().tolist()
    rows = student_out.rows.output
    labels = student_out.rows.labels
    assert totals[0] == 2 and totals[1] == len(labels)
    record = meter.summarize(totals)
    accuracy = 100.0 * (rows.logits.argmax(1) == labels).double().mean().item()
    assert record["train_roi_accuracy"] == pytest.approx(accuracy)
    norms = rows.embedding.detach().norm(dim=1).mean().item()
    assert record["student_emb_norm"] == pytest.approx(norms, rel=1e-5)
    teacher_norm = student_out.teacher.embedding.norm(dim=1).mean().item()
    assert record["teacher_emb_norm"] == pytest.approx(teacher_norm, rel=1e-5)
    assert "teacher_emb_norm" not in task.train_meter(CPU, with_teacher=False).summarize(totals)


def test_training_forward_is_torchvisions(detectors):
    """The detector losses equal torchvision's own training forward (same RNG draws: the
    training sizes, then the RPN and RoI samplers), and ``detect`` its inference."""
    student, _ = detectors
    task = _task()
    reference = FasterRCNN(
        resnet_fpn_backbone(
            backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
        ),
        len(CLASSES),
        min_size=tuple(TRAIN_SIZES),
        max_size=MAX_SIZE,
        **OPTIONS,
    )
    ours = copy.deepcopy(student)
    reference.load_state_dict(ours.state_dict())
    images, targets = _raw_batch()
    torch.manual_seed(5)
    expected = reference.train()(list(images), [dict(t) for t in targets])
    torch.manual_seed(5)
    batch = task.to_device((images, targets), CPU, None, train=True)
    losses, _ = training_rois(ours.train(), batch.images, batch.targets)
    assert losses.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value)
    with torch.no_grad():
        expected = reference.eval()(list(images))
        batch = task.to_device((images, targets), CPU, None)
        found = detection.detect(ours.eval(), batch.images)
    found = task.eval_transform.postprocess(found, batch.images.image_sizes, batch.original_sizes)
    assert sum(len(d["boxes"]) for d in found) > 0
    for ours, theirs in zip(found, expected):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(ours[key], theirs[key])


def test_kd_nd_lshl2_terms_run_on_the_rows(detectors):
    student, teacher = detectors
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    student_probe, teacher_probe = task.probe_rows(student, teacher, batch)
    assert student.training and not teacher.training  # probing left the modes as they were
    assert student_probe.embedding.shape[1] == teacher_probe.embedding.shape[1] == 1024
    assert final_linear(teacher) == (CLASSIFIER, teacher.roi_heads.box_predictor.cls_score)
    centers = ClassMeans(torch.rand(len(CLASSES), 1024) + 0.1)
    context = BuildContext(
        len(CLASSES), student_probe, teacher_probe, centers, student=student, teacher=teacher
    )
    terms = {
        "kd": build_term("kd", context, {"temperature": 1.0}),
        "nd": build_term("nd", context, {}),
        "lshl2": build_term("lshl2", context, {"bias": "zero", "hash_functions": 64}),
    }
    recorder = _Recorder()
    _step(task, student, teacher, recorder, batch)
    rows = recorder.rows
    values = {name: term(rows) for name, term in terms.items()}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in values.values())
    kd = F.kl_div(
        F.log_softmax(rows.student.logits, 1),
        F.softmax(rows.teacher.logits, 1),
        reduction="batchmean",
    )
    torch.testing.assert_close(values["kd"], kd)
    std = teacher.roi_heads.box_predictor.cls_score.weight.std()
    torch.testing.assert_close(terms["lshl2"].hash_weight.std(), std, rtol=0.2, atol=0)


def test_a_training_step_moves_the_student_only(detectors):
    student, teacher = detectors
    student = copy.deepcopy(student)
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    student_probe, teacher_probe = task.probe_rows(student, teacher, batch)
    context = BuildContext(len(CLASSES), student_probe, teacher_probe)
    method = Distiller([TermConfig("kd", params={"temperature": 1.0})], context)
    watched = [
        student.roi_heads.box_predictor.cls_score.weight,
        student.backbone.body.layer4[0].conv1.weight,
        student.rpn.head.conv[0][0].weight,
    ]
    before = [w.detach().clone() for w in watched]
    teacher_before = teacher.roi_heads.box_head.fc7.weight.clone()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    _, _, losses = _step(task, student, teacher, method, batch)
    assert set(losses) == DETECTOR_LOSSES | {"kd"}
    sum(losses.values()).backward()
    optimizer.step()
    assert all(not torch.equal(w, b) for w, b in zip(watched, before))
    assert torch.equal(teacher.roi_heads.box_head.fc7.weight, teacher_before)
    assert all(p.grad is None for p in teacher.parameters())


# --- batches -------------------------------------------------------------------------


def test_to_device_resizes_with_the_train_or_eval_transform():
    task = _task()
    images, targets = _raw_batch()
    torch.manual_seed(0)
    shorter = {min(task.to_device((images, targets), CPU, None, True).images.image_sizes[0])}
    for _ in range(20):
        batch = task.to_device((images, targets), CPU, None, train=True)
        shorter.add(min(batch.images.image_sizes[0]))
    assert shorter == set(TRAIN_SIZES)
    batch = task.to_device((images, targets), CPU, torch.channels_last)
    assert batch.images.image_sizes == [(64, 64), (64, 85)]
    assert batch.original_sizes == [(64, 64), (48, 64)]
    assert batch.images.tensors.is_contiguous(memory_format=torch.channels_last)
    ratios = torch.tensor([85 / 64, 64 / 48] * 2)
    torch.testing.assert_close(batch.targets[1]["boxes"], targets[1]["boxes"] * ratios)
    assert batch.image_ids.tolist() == [1, 2]
    with pytest.raises(ValueError, match="requires_indices"):
        task.to_device((images, targets, torch.tensor([0, 1])), CPU, None)


def test_task_refuses_bad_settings():
    with pytest.raises(ValueError, match="unknown metric"):
        _task(metric="voc12")
    with pytest.raises(ValueError, match="one entry per label"):
        DetectionTask(CLASSES, _truth(), CATEGORY_IDS[:2], TRAIN_SIZES, TEST_SIZE, MAX_SIZE)


def test_coco_metric_without_pycocotools_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match=r'pip install "ndkd\[detection\]"'):
        _task().metrics(torch.zeros(0, 7), 2)


# --- COCO AP ---------------------------------------------------------------------------


def _scene(seed: int = 0) -> tuple[dict, torch.Tensor]:
    """Ground truth of 3 images (small, medium and large boxes, a crowd, an empty class)
    and [N, 7] detections: jittered copies of the boxes, duplicates, false positives."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {1: (200, 160), 2: (120, 180), 3: (90, 90)}
    annotations = []
    for image, (width, height) in sizes.items():
        for category in CATEGORY_IDS[1:3] * 2:
            w, h = torch.rand(2, generator=generator) * torch.tensor([width, height]) * 0.6 + 6
            x = float(torch.rand(1, generator=generator) * (width - w))
            y = float(torch.rand(1, generator=generator) * (height - h))
            annotations.append((image, category, [x, y, float(w), float(h)]))
    truth = {
        "images": [{"id": i, "width": w, "height": h} for i, (w, h) in sizes.items()],
        "annotations": [
            {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3]}
            | {"iscrowd": int(k == 4)}
            for k, (i, c, b) in enumerate(annotations)
        ],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS[1:], CLASSES[1:])],
    }
    rows = []
    for image, category, (x, y, w, h) in annotations * 2:
        jitter = (torch.rand(4, generator=generator) - 0.5) * torch.tensor([w, h, w, h]) * 0.3
        box = torch.tensor([x, y, w, h]) + jitter
        rows.append([image, *box.tolist(), float(torch.rand(1, generator=generator)), category])
    for image in sizes:
        for _ in range(3):
            box = (torch.rand(4, generator=generator) * 40 + 5).tolist()
            rows.append([image, *box, float(torch.rand(1, generator=generator)), CATEGORY_IDS[1]])
    return truth, torch.tensor(rows)


def _cocoeval(truth: dict, detections: torch.Tensor) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(truth)
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(detections.double().numpy()), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def _expected_coco(truth: dict, detections: torch.Tensor) -> dict[str, float]:
    evaluation = _cocoeval(truth, detections)
    expected = {key: 100.0 * value for key, value in zip(COCO_KEYS, evaluation.stats[:6])}
    expected = {key: (math.nan if value == -100.0 else value) for key, value in expected.items()}
    for name, category in zip(CLASSES[1:], CATEGORY_IDS[1:]):
        k = evaluation.params.catIds.index(category)
        precision = evaluation.eval["precision"][:, :, k, 0, -1]
        valid = precision[precision > -1]
        expected[f"test_ap/{name}"] = 100.0 * valid.mean() if valid.size else math.nan
    return expected


def test_coco_ap_equals_pycocotools(capsys):
    truth, detections = _scene()
    task = _task(truth=truth)
    record = task.metrics(detections, 3)
    expected = _expected_coco(truth, detections)
    assert 0 < record["test_ap"] < 100 and math.isnan(record["test_ap/c"])
    for key, value in expected.items():
        assert record[key] == pytest.approx(value, nan_ok=True), key
    assert record["test_images"] == 3
    empty = task.metrics(torch.zeros(0, 7), 3)
    assert empty["test_ap"] == 0.0 and empty["test_ap/a"] == 0.0
    assert capsys.readouterr().out == ""  # pycocotools prints; the library does not


def test_evaluate_maps_detections_back_to_the_images(monkeypatch, capsys):
    """``evaluate`` on a fake detector whose detections (in the resized pixels) are fixed:
    its record equals pycocotools on those detections in the loader's pixels."""
    truth, detections = _scene()
    task = _task(truth=truth)
    sizes = {image["id"]: (image["height"], image["width"]) for image in truth["images"]}
    ids = list(sizes)

    def fake_detect(model, images):
        found = []
        for image, (height, width) in zip(ids, images.image_sizes):
            rows = detections[detections[:, 0] == image]
            boxes = torch.cat([rows[:, 1:3], rows[:, 1:3] + rows[:, 3:5]], 1)
            scale = torch.tensor([width, height] * 2) / torch.tensor(sizes[image][::-1] * 2)
            labels = torch.tensor([CATEGORY_IDS.index(int(c)) for c in rows[:, 6]])
            found.append({"boxes": boxes * scale, "scores": rows[:, 5], "labels": labels})
        return found

    monkeypatch.setattr(detection_task, "detect", fake_detect)
    images = tuple(torch.rand(3, *sizes[image]) for image in ids)
    targets = tuple(
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
        | {"image_id": torch.tensor(image)}
        for image in ids
    )
    record = task.evaluate(nn.Identity(), [(images, targets)], CPU, nullcontext)
    for key, value in _expected_coco(truth, detections).items():
        assert record[key] == pytest.approx(value, nan_ok=True), key
    assert record["test_images"] == 3
    assert capsys.readouterr().out == ""


def test_evaluate_runs_a_real_detector(detectors):
    student, _ = detectors
    model = copy.deepcopy(student)
    record = _task().evaluate(model, [_raw_batch()], CPU, nullcontext)
    assert not model.training
    assert set(COCO_KEYS) | {"test_images", "test_ap/a", "test_ap/b", "test_ap/c"} == set(record)
    assert record["test_images"] == 2 and 0.0 <= record["test_ap"] <= 100.0


# --- VOC07 mAP -------------------------------------------------------------------------


def _iou(a: list[float], b: list[float]) -> float:
    """IoU of two x1, y1, x2, y2 boxes, written out."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _voc07_reference(truth: dict, detections: torch.Tensor, category: int) -> float:
    """The VOC 2007 devkit's evaluation of one class, loop by loop."""
    boxes: dict[int, list] = {}
    positives = 0
    for a in truth["annotations"]:
        if a["category_id"] != category:
            continue
        x, y, w, h = a["bbox"]
        difficult = bool(a.get("difficult", 0))
        boxes.setdefault(a["image_id"], []).append([[x, y, x + w, y + h], difficult, False])
        positives += not difficult
    if positives == 0:
        return math.nan
    mine = sorted((r for r in detections.tolist() if int(r[6]) == category), key=lambda r: -r[5])
    tp, fp = [], []
    for image, x, y, w, h, _, _ in mine:
        best, chosen = -math.inf, None
        for candidate in boxes.get(int(image), []):
            overlap = _iou([x, y, x + w, y + h], candidate[0])
            if overlap > best:
                best, chosen = overlap, candidate
        hit = miss = 0
        if best >= 0.5:
            if not chosen[1]:
                if not chosen[2]:
                    hit, chosen[2] = 1, True
                else:
                    miss = 1
        else:
            miss = 1
        tp.append(hit)
        fp.append(miss)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        ap += (np.max(precision[recall >= t]) if np.sum(recall >= t) else 0.0) / 11.0
    return ap


def test_voc07_map_equals_the_devkit_loops():
    truth, detections = _scene(seed=3)
    for index, annotation in enumerate(truth["annotations"]):
        annotation["iscrowd"], annotation["difficult"] = 0, int(index % 5 == 1)
    task = _task(metric="voc07", truth=truth)
    record = task.metrics(detections, 3)
    expected = {c: _voc07_reference(truth, detections, c) for c in CATEGORY_IDS[1:]}
    for name, category in zip(CLASSES[1:], CATEGORY_IDS[1:]):
        assert record[f"test_ap/{name}"] == pytest.approx(100.0 * expected[category], nan_ok=True)
    assert record["test_ap"] == pytest.approx(100.0 * np.nanmean(list(expected.values())))
    assert 0 < record["test_ap"] < 100 and math.isnan(record["test_ap/c"])
    assert set(record) == {"test_ap", "test_images", "test_ap/a", "test_ap/b", "test_ap/c"}
    perfect = torch.tensor(
        [[a["image_id"], *a["bbox"], 1.0, a["category_id"]] for a in truth["annotations"]]
    )
    assert task.metrics(perfect, 3)["test_ap"] == pytest.approx(100.0)
    assert task.metrics(torch.zeros(0, 7), 3)["test_ap"] == 0.0
    for annotation in truth["annotations"]:  # a crowd counts as difficult
        annotation["iscrowd"] = annotation.pop("difficult")
    assert _task(metric="voc07", truth=truth).metrics(detections, 3) == pytest.approx(
        record, nan_ok=True
    )


# --- class means ---------------------------------------------------------------------


def test_class_means_average_the_teacher_sampled_rois(detectors):
    _, teacher = detectors
    task = _task()
    loader = [_raw_batch(0), _raw_batch(1)]
    torch.manual_seed(3)
    means = task.class_means(teacher, loader, len(CLASSES), CPU)
    torch.manual_seed(3)
    sums = torch.zeros(len(CLASSES), 1024, dtype=torch.float64)
    counts = torch.zeros(len(CLASSES), dtype=torch.long)
    for raw in loader:
        sampled = task.sampled_rows(teacher, task.to_device(raw, CPU, None))
        rows, labels = sampled.output, sampled.labels
        assert len(labels) <= 2 * OPTIONS["box_batch_size_per_image"]
        for row, label in zip(rows.embedding, labels.tolist()):
            sums[label] += row.double()
            counts[label] += 1
    assert torch.equal(means.counts, counts) and counts.min() > 0
    torch.testing.assert_close(means.means, (sums / counts[:, None]).float())
    assert not teacher.training and not teacher.rpn.training
    with pytest.raises(ValueError, match="one row per RoI"):
        task.class_means(teacher, loader, len(CLASSES), CPU, feature=lambda out: out.stages[0])


# --- models ----------------------------------------------------------------------------


def test_every_faster_rcnn_builds_with_torchvision_names():
    assert list_models("detection") == detection.detector_names()
    for name in [n for n in detection.detector_names() if n.startswith("fasterrcnn_")]:
        with torch.device("meta"):
            model = create_model(name, 5)
        assert isinstance(model, FasterRCNN)
        assert model.num_classes == 5 and model.embedding_dim == 1024
        assert [s.stride for s in model.stage_info] == [4, 8, 16, 32, 64]
        assert model.get_classifier() is model.roi_heads.box_predictor.cls_score
        prefixes = {key.split(".")[0] for key in model.state_dict()}
        assert prefixes == {"backbone", "rpn", "roi_heads"}
        assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v2_fpn", "fasterrcnn_vgg11_fpn"])
def test_other_backbone_families_train(name):
    model = create_model(name, len(CLASSES), **OPTIONS)
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    losses, rois = training_rois(model.train(), batch.images, batch.targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert rois.output.embedding.shape == (len(rois.labels), 1024)
    assert [64 // m.shape[-2] for m in rois.output.stages] == [4, 8, 16, 32, 64]


def test_pretrained_recipe_freezes_two_stages_and_batchnorm(monkeypatch):
    def untrained(arch, pretrained, label, **kwargs):
        return torchvision.models.get_model(arch, **kwargs)

    monkeypatch.setattr(detection, "_imagenet_model", untrained)
    frozen = {
        "fasterrcnn_resnet18_fpn": ("conv1.", "bn1.", "layer1."),
        "fasterrcnn_mobilenet_v2_fpn": ("0.", "1.", "2.", "3."),
        "fasterrcnn_vgg16_fpn": ("0.", "2.", "5.", "7."),  # conv1_1, conv1_2, conv2_1, conv2_2
    }
    for name, prefixes in frozen.items():
        with torch.device("meta"):
            model = create_model(name, 3, pretrained=True)
        for key, parameter in model.backbone.body.named_parameters():
            assert parameter.requires_grad != key.startswith(prefixes), (name, key)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_pretrained_backbone_weights_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights_source.urllib.request, "getproxies", dict)

    def refuse(address, timeout=None):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(weights_source.socket, "create_connection", refuse)
    with pytest.raises(ValueError) as caught:
        create_model("fasterrcnn_resnet18_fpn", 3, pretrained=True)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "fasterrcnn_resnet18_fpn: pretrained weights could not be downloaded (download.pytorch.org"
    )
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), cached)
    model = create_model("fasterrcnn_resnet18_fpn", 3, pretrained=True)
    assert torch.equal(model.backbone.body.conv1.weight, source.conv1.weight)
    assert torch.equal(model.backbone.body.bn1.running_var, source.bn1.running_var)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)


def test_torchvision_state_dicts_load_strictly():
    """torchvision's ``fasterrcnn_resnet50_fpn`` (COCO: 91 classes) state dict, and the
    same without ``num_batches_tracked`` (the layout of its published COCO weights)."""
    torch.manual_seed(0)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91
    )
    state = reference.state_dict()
    model = create_model("fasterrcnn_resnet50_fpn", 91)
    load_checkpoint(model, state)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    published = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_checkpoint(model, {"model": published})


def test_detectors_refuse_bad_options_and_keep_the_teacher_unfolded(detectors):
    with pytest.raises(ValueError, match="unknown detector 'fasterrcnn_resnet9_fpn'"):
        create_model("fasterrcnn_resnet9_fpn", 3)
    with pytest.raises(ValueError, match="unknown option 'pool'.*box_batch_size_per_image"):
        create_model("fasterrcnn_resnet18_fpn", 3, pool="avg")
    with pytest.raises(ValueError, match="in_channels 3"):
        create_model("fasterrcnn_resnet18_fpn", 3, in_channels=1)
    with pytest.raises(ValueError, match="counts the background"):
        create_model("fasterrcnn_resnet18_fpn", 1)
    _, teacher = detectors
    assert fold_batchnorm(teacher) is teacher  # torch.fx cannot trace a detector
