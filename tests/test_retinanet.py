"""RetinaNet detectors: the builders and torchvision's state dict, the rows the terms see
(feature-map positions, LSHFM's 3 x 3 classification-tower patches, the teacher at the same
positions) against independent computations, the detector losses and detections against
torchvision's own forward, l2 / lshl2 on the rows, a training step, COCO evaluation, and the
refusals (label-reading terms, class means, a Faster R-CNN teacher). Tiny: ResNet-18 FPN
detectors on the two ~64 px images of ``test_detection_task``."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ndkd.config import TermConfig
from ndkd.methods import BuildContext, Distiller, build_term
from ndkd.models import create_model, detection, list_models, load_checkpoint
from ndkd.models.detection import RETINANET_CLASSIFIER, PatchClassifier, backbone_features
from ndkd.models.fold import fold_batchnorm
from ndkd.tasks.detection import COCO_KEYS
from test_detection_task import (
    CLASSES,
    MAX_SIZE,
    TRAIN_SIZES,
    _raw_batch,
    _Recorder,
    _step,
    _task,
    detector_pair,
)

CPU = torch.device("cpu")
ANCHORS = 9
STRIDES = [8, 16, 32, 64, 128]
OPTIONS = {"score_thresh": 0.005, "topk_candidates": 50}  # untrained: scores ~0.01 (prior)
DETECTOR_LOSSES = {"det_classification", "det_bbox_regression"}


@pytest.fixture(scope="module")
def detectors() -> tuple[nn.Module, nn.Module]:
    """A RetinaNet student and a (differently initialised) teacher, ResNet-18 FPN, 3 classes."""
    return detector_pair("retinanet_resnet18_fpn", OPTIONS)


def _patches(detector: nn.Module, maps: list[torch.Tensor]) -> torch.Tensor:
    """``[N, P, 256 * 9]``: the 3 x 3 neighbourhoods (zero padded) of the classification
    tower's output at every position, levels in order, written out with shifted slices."""
    rows = []
    for level in maps:
        tower = F.pad(detector.head.classification_head.conv(level), (1, 1, 1, 1))
        height, width = level.shape[-2:]
        shifts = [tower[..., y : y + height, x : x + width] for y in range(3) for x in range(3)]
        rows.append(torch.stack(shifts, dim=2).flatten(1, 2).flatten(2).transpose(1, 2))
    return torch.cat(rows, dim=1)


def _reference(num_classes: int, **options) -> RetinaNet:
    """torchvision's RetinaNet on the ResNet-18 FPN of ``retinanet_resnet50_fpn``'s layout."""
    backbone = _resnet_fpn_extractor(
        torchvision.models.resnet18(), 5, [2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    return RetinaNet(backbone, num_classes, **options)


# --- rows ------------------------------------------------------------------------------


def test_rows_are_positions_with_the_teacher_at_the_same_positions(detectors):
    student, teacher = detectors
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    recorder = _Recorder()
    student_out, teacher_out, losses = _step(task, student, teacher, recorder, batch)
    rows, seen = student_out.rows, recorder.rows
    maps = [m.detach() for m in seen.student.stages]
    sizes = [m.shape[-2] * m.shape[-1] for m in maps]
    assert [64 // m.shape[-2] for m in maps[:3]] == STRIDES[:3]
    assert rows.mask.shape == (2, sum(sizes))
    count = int(rows.mask.sum())
    assert seen.student.embedding.shape == seen.teacher.embedding.shape == (count, 256 * 9)
    assert seen.student.logits.shape == seen.teacher.logits.shape == (count, ANCHORS * 4)
    assert seen.labels.shape == (count, ANCHORS) and seen.labels.dtype == torch.int64
    # the rows: positions where some anchor is foreground or background, as the matcher says
    anchors = student.anchor_generator(batch.images, maps)
    expected = []
    for boxes, target in zip(anchors, batch.targets):
        matched = student.proposal_matcher(box_iou(target["boxes"], boxes))
        classes = torch.where(matched >= 0, target["labels"][matched.clamp(min=0)], 0)
        expected.append(torch.where(matched == -2, -1, classes).view(-1, ANCHORS))
    expected = torch.stack(expected)
    assert torch.equal(rows.mask, (expected != -1).any(dim=2))
    assert torch.equal(seen.labels, expected[rows.mask])
    assert set(seen.labels.unique().tolist()) == {-1, 0, 1, 2, 3}
    # student and teacher rows: the tower patches at the same positions
    with torch.no_grad():
        teacher_maps = list(backbone_features(teacher, batch.images).values())
        torch.testing.assert_close(
            seen.teacher.embedding, _patches(teacher, teacher_maps)[rows.mask]
        )
        torch.testing.assert_close(
            seen.student.embedding, _patches(student, list(maps))[rows.mask], rtol=1e-4, atol=1e-5
        )
        # the logits: torchvision's head output, per position; cls_logits of the patch
        head = teacher.head.classification_head(teacher_maps).reshape(2, sum(sizes), -1)
        torch.testing.assert_close(seen.teacher.logits, head[rows.mask])
    classifier = teacher.get_submodule(RETINANET_CLASSIFIER)
    linear = seen.teacher.embedding @ classifier.weight.flatten(1).T + classifier.bias
    torch.testing.assert_close(linear, seen.teacher.logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(student_out.teacher.embedding, seen.teacher.embedding)
    assert not seen.teacher.embedding.requires_grad and seen.student.embedding.requires_grad
    assert set(losses) == DETECTOR_LOSSES
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())
    # the meter: no RoI accuracy (no class per row), the rows' norms
    meter = task.train_meter(CPU, with_teacher=True)
    meter.update(student_out, teacher_out, batch)
    record = meter.summarize(meter.totals().tolist())
    assert set(record) == {"student_emb_norm", "teacher_emb_norm"}
    norm = seen.student.embedding.detach().norm(dim=1).mean().item()
    assert record["student_emb_norm"] == pytest.approx(norm, rel=1e-5)


def test_positions_all_in_the_ignore_band_are_no_rows():
    """With every anchor between the thresholds (background below IoU 0, foreground from
    0.99) only the best anchors of each box are assigned (low-quality matches): the rows are
    their positions, the other anchors there ignored."""
    torch.manual_seed(0)
    model = create_model("retinanet_resnet18_fpn", len(CLASSES), bg_iou_thresh=0.0)
    model.proposal_matcher.high_threshold = 0.99
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    rows = task.sampled_rows(model, batch)
    assert 3 <= int(rows.mask.sum()) <= 10 < rows.mask.shape[1]
    assert (rows.labels != 0).all() and (rows.labels > 0).any(dim=1).all()
    assert set(rows.labels[rows.labels > 0].tolist()) == {1, 2, 3}
    assert model.training  # sampling left the mode as it was


def test_training_forward_and_detections_are_torchvisions(detectors):
    """The detector losses equal torchvision's own training forward (same size draws), and
    ``detect`` its inference."""
    student, _ = detectors
    task = _task()
    reference = _reference(len(CLASSES), min_size=tuple(TRAIN_SIZES), max_size=MAX_SIZE, **OPTIONS)
    ours = copy.deepcopy(student)
    reference.load_state_dict(ours.state_dict())
    images, targets = _raw_batch()
    torch.manual_seed(5)
    expected = reference.train()(list(images), [dict(t) for t in targets])
    torch.manual_seed(5)
    batch = task.to_device((images, targets), CPU, None, train=True)
    losses, _ = detection.training_rows(ours.train(), batch.images, batch.targets)
    assert losses.keys() == expected.keys() == {"classification", "bbox_regression"}
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


# --- terms and training ----------------------------------------------------------------


def _context(task, student, teacher, batch) -> BuildContext:
    student_probe, teacher_probe = task.probe_rows(student, teacher, batch)
    assert student.training and not teacher.training  # probing left the modes as they were
    return BuildContext(
        len(CLASSES), student_probe, teacher_probe, student=student, teacher=teacher
    )


def test_l2_and_lshl2_run_on_the_rows(detectors):
    student, teacher = detectors
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    context = _context(task, student, teacher, batch)
    assert context.student_probe.embedding.shape[1] == 256 * 9
    std = float(teacher.get_submodule(RETINANET_CLASSIFIER).weight.std())  # LSHFM's default
    l2 = build_term("l2", context, {"dims": "mean"})
    lshl2 = build_term("lshl2", context, {"bias": "zero", "hash_functions": 64, "hash_std": std})
    recorder = _Recorder()
    _step(task, student, teacher, recorder, batch)
    rows = recorder.rows
    mse = F.mse_loss(rows.student.embedding, rows.teacher.embedding)
    torch.testing.assert_close(l2(rows), mse)
    hashed = lshl2.hash_weight
    bce = F.binary_cross_entropy_with_logits(
        rows.student.embedding @ hashed.T, (rows.teacher.embedding @ hashed.T > 0).float()
    )
    torch.testing.assert_close(lshl2(rows), mse + bce, rtol=1e-4, atol=1e-6)


def test_a_training_step_moves_the_student_only(detectors):
    student, teacher = detectors
    student = copy.deepcopy(student)
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    context = _context(task, student, teacher, batch)
    params = {"bias": "zero", "hash_functions": 64, "hash_std": 0.01}
    method = Distiller([TermConfig("lshl2", params=params)], context)
    watched = [
        student.head.classification_head.conv[0][0].weight,
        student.head.regression_head.bbox_reg.weight,
        student.backbone.body.layer4[0].conv1.weight,
    ]
    before = [w.detach().clone() for w in watched]
    teacher_before = teacher.head.classification_head.conv[0][0].weight.clone()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    _, _, losses = _step(task, student, teacher, method, batch)
    assert set(losses) == DETECTOR_LOSSES | {"lshl2"} and losses["lshl2"] > 0
    sum(losses.values()).backward()
    optimizer.step()
    assert all(not torch.equal(w, b) for w, b in zip(watched, before))
    assert torch.equal(teacher.head.classification_head.conv[0][0].weight, teacher_before)
    assert all(p.grad is None for p in teacher.parameters())


def test_label_reading_terms_class_means_and_other_teachers_are_refused(detectors):
    student, teacher = detectors
    task = _task()
    batch = task.to_device(_raw_batch(), CPU, None, train=True)
    context = _context(task, student, teacher, batch)
    method = Distiller([TermConfig("l2", params={"reduction": "class"})], context)
    with pytest.raises(ValueError, match="'l2' reads one class label per row"):
        _step(task, student, teacher, method, batch)
    with pytest.raises(ValueError, match="RetinaNet's rows are feature-map positions"):
        task.class_means(teacher, [_raw_batch()], len(CLASSES), CPU)
    faster = create_model("fasterrcnn_resnet18_fpn", len(CLASSES)).eval()
    with pytest.raises(ValueError, match="same kind of detector"):
        task.probe_rows(student, faster, batch)
    with pytest.raises(ValueError, match="same kind of detector"):
        task.probe_rows(faster.train(), teacher, batch)
    assert fold_batchnorm(teacher) is teacher  # the trainer's teacher stays the detector


def test_evaluate_runs_through_the_coco_path(detectors):
    student, _ = detectors
    model = copy.deepcopy(student)
    record = _task().evaluate(model, [_raw_batch()], CPU, nullcontext)
    assert not model.training
    assert set(COCO_KEYS) | {"test_images", "test_ap/a", "test_ap/b", "test_ap/c"} == set(record)
    assert record["test_images"] == 2 and 0.0 <= record["test_ap"] <= 100.0


# --- models ----------------------------------------------------------------------------


def test_every_retinanet_builds_with_torchvision_names():
    names = [n for n in detection.detector_names() if n.startswith("retinanet_")]
    assert len(names) == 8 and set(names) <= set(list_models("detection"))
    for name in names:
        with torch.device("meta"):
            model = create_model(name, 5, topk_candidates=500)
        assert isinstance(model, RetinaNet) and model.topk_candidates == 500
        assert model.num_classes == ANCHORS * 5 and model.embedding_dim == 256 * 9
        assert [s.stride for s in model.stage_info] == STRIDES
        assert isinstance(model.head.classification_head.cls_logits, PatchClassifier)
        assert model.classifier_name == RETINANET_CLASSIFIER
        assert {key.split(".")[0] for key in model.state_dict()} == {"backbone", "head"}
        assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="unknown option 'box_batch_size_per_image'"):
        create_model("retinanet_resnet18_fpn", 3, box_batch_size_per_image=8)


def test_torchvision_state_dict_loads_strictly():
    """torchvision's ``retinanet_resnet50_fpn`` (COCO: 91 classes) state dict, and the same
    without ``num_batches_tracked`` (the layout of its published COCO weights)."""
    torch.manual_seed(0)
    reference = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=91
    )
    state = reference.state_dict()
    model = create_model("retinanet_resnet50_fpn", 91)
    load_checkpoint(model, state)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    published = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_checkpoint(model, {"model": published})
