"""Feature-map methods: ReviewKD (HCL + ABF), FitNet (hint + regressor), OFD (margin + partial L2).

Losses against explicit references, adapters sized from probes for several pairs, gradients,
a few training steps, checkpoint round trips and the ReviewKD(++) recipe weights.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ndkd.config import TermConfig, load_config
from ndkd.losses.fitnet import hint_loss
from ndkd.losses.ofd import ofd_loss, ofd_margin
from ndkd.losses.reviewkd import hcl_loss
from ndkd.methods import BuildContext, Distiller, StepOutputs
from ndkd.methods.ofd import bn_before_relu
from ndkd.models import ModelOutput, create_model

ROOT = Path(__file__).resolve().parents[1]
TERMS = ("reviewkd", "fitnet", "ofd")

# HCL weight of the full map and of each pooled level l, by map height (paper/public code:
# weight 1 for the map, then 1/2, 1/4, 1/8 for the levels 4, 2, 1 smaller than the map).
HCL_WEIGHTS = {
    8: {None: 1.0, 4: 0.5, 2: 0.25, 1: 0.125},
    6: {None: 1.0, 4: 0.5, 2: 0.25, 1: 0.125},
    4: {None: 1.0, 2: 0.5, 1: 0.25},
    2: {None: 1.0, 1: 0.5},
    1: {None: 1.0},
}

# teacher -> student: (ReviewKD++ kd weight, nd weight), the ND paper's train_reviewkd.sh.
REVIEWKD_PLUS_PLUS = {
    "resnet56_resnet20": (1.2, 1.0),
    "resnet32x4_resnet8x4": (8.0, 1.0),
    "wrn_40_2_wrn_40_1": (5.0, 4.0),
    "resnet50_cifar_mobilenetv2": (6.0, 2.0),
    "resnet32x4_shufflenetv1": (7.0, 1.0),
    "resnet32x4_shufflenetv2": (8.0, 1.5),
}


def pool_by_windows(x, level):
    """Adaptive average pooling written out: window i covers [floor(iH/l), ceil((i+1)H/l))."""
    height, width = x.shape[-2:]
    out = torch.empty(*x.shape[:2], level, level, dtype=x.dtype)
    for i in range(level):
        for j in range(level):
            rows = slice(i * height // level, math.ceil((i + 1) * height / level))
            cols = slice(j * width // level, math.ceil((j + 1) * width / level))
            out[:, :, i, j] = x[:, :, rows, cols].mean(dim=(2, 3))
    return out


def mse(a, b):
    return ((a - b) ** 2).sum() / a.numel()


def test_hcl_against_explicit_pyramid():
    sizes = [8, 6, 4, 2, 1]
    students = [torch.randn(2, 3, h, h, dtype=torch.float64) for h in sizes]
    teachers = [torch.randn(2, 3, h, h, dtype=torch.float64) for h in sizes]
    expected = 0.0
    for s, t in zip(students, teachers):
        weights = HCL_WEIGHTS[s.shape[2]]
        level_losses = {
            level: mse(s, t)
            if level is None
            else mse(pool_by_windows(s, level), pool_by_windows(t, level))
            for level in weights
        }
        expected += sum(weights[k] * level_losses[k] for k in weights) / sum(weights.values())
    torch.testing.assert_close(hcl_loss(students, teachers), torch.as_tensor(expected))


def test_hcl_gradcheck_and_refusals():
    s = [torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)]
    t = [torch.randn(1, 2, 4, 4, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda x: hcl_loss([x], t), s)
    with pytest.raises(ValueError, match="as many student as teacher"):
        hcl_loss(s, t + t)
    with pytest.raises(ValueError, match="same shape"):
        hcl_loss(s, [torch.randn(2, 2, 2, 2)])


def test_ofd_partial_l2_against_element_loop():
    margins = [torch.tensor([-0.3, -1.0, 0.0]), torch.tensor([-0.5, -0.1])]  # 0: t clamps to 0
    shapes = [(2, 3, 2, 2), (2, 2, 1, 2)]
    students = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    teachers = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    expected = 0.0
    for index, (s, t, m) in enumerate(zip(students, teachers, margins)):
        stage = 0.0
        for b, c, h, w in np.ndindex(*s.shape):
            target = max(float(t[b, c, h, w]), float(m[c]))
            value = float(s[b, c, h, w])
            if value <= target and target <= 0:
                continue
            stage += (value - target) ** 2
        expected += stage / s.shape[0] / 2 ** (len(students) - 1 - index)
    got = ofd_loss(students, teachers, margins)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    s = students[0].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ofd_loss([x], teachers[:1], margins[:1]), [s])


@pytest.mark.parametrize(
    ("mean", "std"), [(0.0, 1.0), (-2.0, 0.5), (0.7, 0.5), (1.5, 0.8), (-0.3, -2.0)]
)
def test_margin_is_the_mean_of_the_negative_gaussian_part(mean, std):
    s = abs(std)
    x = np.linspace(mean - 14 * s, 0.0, 400_001)
    density = np.exp(-0.5 * ((x - mean) / s) ** 2)
    expected = np.trapezoid(x * density, x) / np.trapezoid(density, x)
    got = ofd_margin(torch.tensor([mean]), torch.tensor([std]))
    assert got.item() == pytest.approx(expected, abs=1e-4)


def test_margin_falls_back_to_three_std_when_negatives_are_rare():
    got = ofd_margin(torch.tensor([4.0, 0.0]), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(got, torch.tensor([-3.0, 0.0]))


def test_hint_loss_against_reference():
    s = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    t = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    values = [(a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())]
    assert hint_loss(s, t).item() == pytest.approx(sum(values) / len(values), rel=1e-12)


def probe(model, images):
    with torch.no_grad():
        return model.eval()(images)


def context(student, teacher, images):
    return BuildContext(
        student.num_classes,
        probe(student, images),
        probe(teacher, images),
        student=student,
        teacher=teacher.eval(),
    )


@pytest.mark.parametrize(
    ("teacher_name", "student_name"),
    [("resnet32x4", "shufflenetv1"), ("resnet56", "resnet20"), ("wrn_40_2", "wrn_40_1")],
)
def test_adapters_are_sized_from_the_probes(teacher_name, student_name):
    teacher, student = create_model(teacher_name, 10), create_model(student_name, 10)
    images = torch.randn(2, 3, 32, 32)
    ctx = context(student, teacher, images)
    s_out, t_out = ctx.student_probe, ctx.teacher_probe
    method = Distiller([TermConfig(name, 1.0) for name in TERMS], ctx).eval()

    review = method.terms["reviewkd"]
    s_levels = [*s_out.stages[1:], s_out.embedding[:, :, None, None]]
    t_levels = [*t_out.preact_stages[1:], t_out.embedding[:, :, None, None]]
    mid = min(512, s_out.embedding.shape[1])
    assert len(review.abfs) == len(t_levels)
    for abf, s, t in zip(review.abfs, s_levels, t_levels):
        assert abf.conv1[0].in_channels == s.shape[1] and abf.conv1[0].out_channels == mid
        assert abf.conv2[0].out_channels == t.shape[1]
        out, _ = abf(s, torch.randn(2, mid, 1, 1) if abf.att_conv else None, t.shape[-2:])
        assert out.shape == t.shape
    assert review.abfs[-1].att_conv is None and all(a.att_conv for a in review.abfs[:-1])

    hint = method.terms["fitnet"].regressor(s_out.stages[2])
    assert hint.shape == t_out.stages[2].shape

    ofd = method.terms["ofd"]
    for conn, s, t, margin in zip(
        ofd.connectors, s_out.preact_stages[1:], t_out.preact_stages[1:], ofd.margins()
    ):
        assert conn(s).shape == (2, t.shape[1], *s.shape[-2:])
        assert margin.shape == (t.shape[1],)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet56", ["layer1.8.bn2", "layer2.8.bn2", "layer3.8.bn2"]),
        ("wrn_40_2", ["block2.layer.0.bn1", "block3.layer.0.bn1", "bn1"]),
        ("resnet50_cifar", ["layer1.2.bn3", "layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"]),
    ],
)
def test_ofd_finds_the_public_codes_bn_before_relu(name, expected):
    model = create_model(name, 10)
    images = torch.randn(2, 3, 32, 32)
    out = probe(model, images)
    names = {module: key for key, module in model.named_modules()}
    bns = bn_before_relu(model, images, range(1, len(out.preact_stages)))
    assert [names[bn] for bn in bns] == expected


def test_ofd_margins_come_from_the_teacher_bns(tiny_pair):
    teacher, student, images, _ = tiny_pair
    teacher = copy.deepcopy(teacher)
    for module in teacher.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    term = Distiller([TermConfig("ofd", 1.0)], context(student, teacher, images[:2])).terms["ofd"]
    bns = [teacher.get_submodule(f"layer{i}.1.bn2") for i in (1, 2, 3)]
    for got, bn in zip(term.margins(), bns):
        torch.testing.assert_close(got, ofd_margin(bn.bias, bn.weight))


def test_refusals():
    images = torch.randn(2, 3, 32, 32)
    student, teacher = create_model("resnet8", 10), create_model("shufflenetv2", 10)
    with pytest.raises(ValueError, match="no affine BatchNorm2d produces"):
        Distiller([TermConfig("ofd", 1.0)], context(student, teacher, images))
    s_out = probe(student, images)
    fewer = ModelOutput(s_out.logits, s_out.embedding, s_out.stages[:3], s_out.preact_stages[:3])
    with pytest.raises(ValueError, match="the student has 3 such stages, the teacher 2"):
        Distiller([TermConfig("reviewkd", 1.0)], BuildContext(10, s_out, fewer))
    tiny = ModelOutput(s_out.logits, s_out.embedding, [s[:, :, :2, :2] for s in s_out.stages])
    with pytest.raises(ValueError, match="cannot regress a 2x2 student map onto a 16x16"):
        Distiller([TermConfig("fitnet", 1.0)], BuildContext(10, tiny, s_out))
    with pytest.raises(ValueError, match=r"hint_stage must be in \[0, 3\]"):
        Distiller([TermConfig("fitnet", 1.0, 0, {"hint_stage": 4})], BuildContext(10, s_out, s_out))
    with pytest.raises(ValueError, match="needs a teacher"):
        Distiller([TermConfig("reviewkd", 1.0)], BuildContext(10, s_out))


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(1)
    teacher, student = create_model("resnet14", 10).eval(), create_model("resnet8", 10)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    return teacher, student, images, labels


def step_outputs(student, teacher, images, labels):
    with torch.no_grad():
        teacher_out = teacher(images)
    return StepOutputs(student(images), teacher_out, labels)


@pytest.mark.parametrize("name", TERMS)
def test_term_trains_its_modules_and_the_student(name, tiny_pair):
    teacher, template, images, labels = tiny_pair
    student = create_model("resnet8", 10)
    student.load_state_dict(template.state_dict())
    method = Distiller([TermConfig(name, 1.0)], context(student, teacher, images[:2]))
    student.train(), method.train()
    params = list(student.parameters()) + list(method.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(4):
        loss = method(step_outputs(student, teacher, images, labels), 0)[name]
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
            assert student.conv1.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("name", TERMS)
def test_state_dict_round_trip(name, tiny_pair):
    teacher, student, images, labels = tiny_pair
    method = Distiller([TermConfig(name, 1.0)], context(student, teacher, images[:2]))
    method.train()
    with torch.no_grad():  # one forward in train mode moves the BN running statistics
        method(step_outputs(student, teacher, images, labels), 0)
        for p in method.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = method.state_dict()
    torch.manual_seed(123)
    fresh = Distiller([TermConfig(name, 1.0)], context(student, teacher, images[:2]))
    fresh.load_state_dict(state)
    method.eval(), fresh.eval(), student.eval()
    with torch.no_grad():
        outputs = step_outputs(student, teacher, images, labels)
        torch.testing.assert_close(fresh(outputs, 0)[name], method(outputs, 0)[name])
    if name == "ofd":
        assert {"terms.ofd.margin0", "terms.ofd.margin2"} <= set(state)


@pytest.mark.parametrize("stem", sorted(REVIEWKD_PLUS_PLUS))
def test_reviewkd_recipes_carry_the_published_weights(stem):
    kd, nd = REVIEWKD_PLUS_PLUS[stem]
    plus = load_config(ROOT / "configs/cifar100/reviewkd++" / f"{stem}.yaml")
    plain = load_config(ROOT / "configs/cifar100/controlled/reviewkd" / f"{stem}.yaml")
    expected = [("ce", 1.0, 0.0, {}), ("reviewkd", kd, 20.0, {}), ("nd", nd, 0.0, {})]
    got = [(t.name, t.weight, t.warmup_epochs, t.params) for t in plus.terms]
    assert got == expected
    assert [(t.name, t.weight, t.warmup_epochs, t.params) for t in plain.terms] == expected[:2]
    assert plus.output_dir == f"runs/cifar100/reviewkd++/{stem}/seed0"
    assert plain.output_dir == f"runs/cifar100/controlled/reviewkd/{stem}/seed0"
