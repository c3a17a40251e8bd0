"""ReviewKD on detectors (``levels: fpn``): ABF + HCL over the five 256-channel FPN maps of
the batch's images, nothing of the per-RoI rows, as the public ReviewKD Detection code
(``Detection/model/kd_trans.py``: five ABFs 256 -> 256 -> 256, HCL levels 4, 2, 1). Against
HCL written out, on the raw maps (identity ABFs) and on the review path written out; the
default ``levels: backbone`` refuses detection rows; one real Faster R-CNN step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ndkd.config import TermConfig
from ndkd.methods import BuildContext, Distiller, StepOutputs, build_term
from ndkd.models import ModelOutput, create_model
from ndkd.models.detection import backbone_features
from test_detection_task import CLASSES, OPTIONS, _raw_batch, _step, _task

IMAGES, ROIS, EMBEDDING, CHANNELS = 2, 7, 1024, 256
# P2..P6 of a padded 64 x 96 batch (strides 4..64; P6 is torchvision's max pool, ceil)
SIZES = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
# HCL weight of the full map and of each pooled level l (l x l, only l < H), by map height:
# 1 for the map, then 1/2, 1/4, 1/8 in order for the levels used (ReviewKD's hcl).
HCL_WEIGHTS = {
    16: {None: 1.0, 4: 0.5, 2: 0.25, 1: 0.125},
    8: {None: 1.0, 4: 0.5, 2: 0.25, 1: 0.125},
    4: {None: 1.0, 2: 0.5, 1: 0.25},
    2: {None: 1.0, 1: 0.5},
    1: {None: 1.0},
}


def rows(seed: int, rois: int = ROIS, grad: bool = False) -> ModelOutput:
    """Detection-like rows: ``rois`` rows of embedding and logits, five FPN maps of the
    images (``stages`` and ``preact_stages`` the same list, as the detection task's)."""
    generator = torch.Generator().manual_seed(seed)
    maps = [
        torch.randn(IMAGES, CHANNELS, *size, generator=generator).requires_grad_(grad)
        for size in SIZES
    ]
    logits = torch.randn(rois, len(CLASSES), generator=generator)
    embedding = torch.randn(rois, EMBEDDING, generator=generator)
    return ModelOutput(logits, embedding, maps, maps)


def fpn_term(student: ModelOutput, teacher: ModelOutput):
    return build_term("reviewkd", BuildContext(len(CLASSES), student, teacher), {"levels": "fpn"})


def pooled(x: torch.Tensor, level: int) -> torch.Tensor:
    """Average pooling to ``level x level`` of a map whose sides ``level`` divides."""
    n, c, h, w = x.shape
    return x.reshape(n, c, level, h // level, level, w // level).mean(dim=(3, 5))


def hcl_reference(students: list[torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
    """HCL written out: per pair, the weighted mean squared errors of the maps and their
    pools, divided by the weights' sum; pairs summed."""
    total = torch.zeros(())
    for s, t in zip(students, teachers):
        weights = HCL_WEIGHTS[s.shape[2]]
        loss = sum(
            weight * (s - t).pow(2).mean()
            if level is None
            else weight * (pooled(s, level) - pooled(t, level)).pow(2).mean()
            for level, weight in weights.items()
        )
        total = total + loss / sum(weights.values())
    return total


def review_reference(term, students: list[torch.Tensor]) -> list[torch.Tensor]:
    """The review path written out with the term's ABF layers: from P6 (no fusion) down to
    P2, each level's ``conv1`` map mixed with the deeper level's (nearest upsampling) by
    the two sigmoid weights of ``att_conv``, then ``conv2``; shallowest first."""
    outputs, deeper = [], None
    for abf, student in zip(list(term.abfs)[::-1], students[::-1]):
        x = abf.conv1(student)
        if deeper is not None:
            up = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            weights = abf.att_conv(torch.cat([x, up], dim=1))
            x = x * weights[:, 0:1] + up * weights[:, 1:2]
        outputs.insert(0, abf.conv2(x))
        deeper = x
    return outputs


def test_one_abf_per_fpn_level_256_wide():
    term = fpn_term(rows(0), rows(1))
    assert len(term.abfs) == len(SIZES)
    for abf in term.abfs:
        assert abf.conv1[0].in_channels == abf.conv1[0].out_channels == CHANNELS
        assert abf.conv2[0].in_channels == abf.conv2[0].out_channels == CHANNELS
    assert term.abfs[-1].att_conv is None and all(abf.att_conv for abf in term.abfs[:-1])


@torch.no_grad()
def test_identity_fusions_leave_the_hcl_of_the_fpn_maps():
    student, teacher = rows(0), rows(1)
    term = fpn_term(student, teacher).eval()
    eye = torch.eye(CHANNELS)
    for abf in term.abfs:
        abf.conv1[0].weight.copy_(eye[:, :, None, None])
        abf.conv2[0].weight.zero_()
        abf.conv2[0].weight[:, :, 1, 1] = eye
        for bn in (abf.conv1[1], abf.conv2[1]):
            bn.running_var.fill_(1.0 - bn.eps)
        if abf.att_conv is not None:  # all weight on the level's own map
            abf.att_conv[0].weight.zero_()
            abf.att_conv[0].bias.copy_(torch.tensor([40.0, -40.0]))
    loss = term(StepOutputs(student, teacher, torch.zeros(ROIS, dtype=torch.long)))
    torch.testing.assert_close(loss, hcl_reference(student.stages, teacher.stages))


def test_loss_is_hcl_of_the_review_path_and_reaches_the_student_maps():
    student, teacher = rows(0, grad=True), rows(1)
    term = fpn_term(rows(2), teacher)  # sized from probes, run on other rows
    loss = term(StepOutputs(student, teacher, torch.zeros(ROIS, dtype=torch.long)))
    expected = hcl_reference(review_reference(term, student.stages), teacher.stages)
    torch.testing.assert_close(loss, expected)
    # the RoI rows play no part: other RoIs (another count), same maps, same loss
    other = rows(3, rois=ROIS + 5)
    moved = ModelOutput(other.logits, other.embedding, student.stages, student.stages)
    labels = torch.zeros(ROIS + 5, dtype=torch.long)
    torch.testing.assert_close(term(StepOutputs(moved, teacher, labels)), loss)
    loss.backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in student.stages)
    assert all(p.grad is not None for p in term.parameters())


def test_levels_are_checked():
    with pytest.raises(ValueError, match="set levels: fpn"):
        build_term("reviewkd", BuildContext(len(CLASSES), rows(0), rows(1)), {})
    with pytest.raises(ValueError, match="levels must be one of"):
        build_term("reviewkd", BuildContext(len(CLASSES), rows(0), rows(1)), {"levels": "p2"})
    fewer = rows(1)
    fewer = ModelOutput(fewer.logits, fewer.embedding, fewer.stages[:4], fewer.stages[:4])
    with pytest.raises(ValueError, match="the student has 5 such stages, the teacher 4"):
        fpn_term(rows(0), fewer)


def test_a_detection_step_distils_the_student_fpn():
    torch.manual_seed(0)
    student = create_model("fasterrcnn_resnet18_fpn", len(CLASSES), **OPTIONS)
    teacher = create_model("fasterrcnn_resnet18_fpn", len(CLASSES), **OPTIONS)
    teacher.eval().requires_grad_(False)
    task = _task()
    batch = task.to_device(_raw_batch(), torch.device("cpu"), None, train=True)
    student_probe, teacher_probe = task.probe_rows(student, teacher, batch)
    context = BuildContext(len(CLASSES), student_probe, teacher_probe)
    method = Distiller([TermConfig("reviewkd", params={"levels": "fpn"})], context)
    term = method.terms["reviewkd"]
    assert [abf.conv1[0].in_channels for abf in term.abfs] == [CHANNELS] * 5
    _, _, losses = _step(task, student, teacher, method, batch)
    # the term saw the two detectors' FPN maps of the batch
    student_maps = list(backbone_features(student, batch.images).values())
    with torch.no_grad():
        teacher_maps = list(backbone_features(teacher, batch.images).values())
    fpn_rows = StepOutputs(
        ModelOutput(student_probe.logits, student_probe.embedding, student_maps),
        ModelOutput(teacher_probe.logits, teacher_probe.embedding, teacher_maps),
        torch.zeros(student_probe.logits.shape[0], dtype=torch.long),
    )
    torch.testing.assert_close(losses["reviewkd"], term(fpn_rows))
    losses["reviewkd"].backward()
    fpn = student.backbone.fpn
    convs = [block[0].weight for block in (*fpn.inner_blocks, *fpn.layer_blocks)]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in convs)
    assert student.backbone.body.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.roi_heads.parameters())
    assert all(p.grad is None for p in teacher.parameters())
