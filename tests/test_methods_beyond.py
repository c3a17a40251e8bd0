"""The nkd and wttm terms, and the standardize option of kd and dkd: built by name, equal to
their losses, refusing bad parameters and contexts, training a student."""

from __future__ import annotations

import math

import pytest
import torch

from ndkd import ModelOutput
from ndkd.config import TermConfig
from ndkd.losses.dkd import dkd_loss
from ndkd.losses.kd import kd_loss
from ndkd.losses.nkd import nkd_loss
from ndkd.losses.standardize import standardize_pair
from ndkd.losses.wttm import wttm_loss
from ndkd.methods import BuildContext, Distiller, StepOutputs, build_term, term_parameters
from test_methods_logit import train_towards_teacher


def outputs(batch=6, classes=4, teacher_classes=None):
    student = ModelOutput(torch.randn(batch, classes), torch.randn(batch, 3))
    teacher = ModelOutput(torch.randn(batch, teacher_classes or classes), torch.randn(batch, 3))
    return student, teacher, torch.arange(batch) % classes


def context(student, teacher, multi_label=False):
    return BuildContext(student.logits.shape[1], student, teacher, multi_label=multi_label)


def test_parameters_and_defaults():
    assert term_parameters("nkd") == {"temperature": 1.0, "gamma": 1.5}
    assert term_parameters("wttm") == {"gamma": 0.2}
    assert term_parameters("kd") == {"temperature": 4.0, "standardize": False}
    assert term_parameters("dkd") == {
        "alpha": 1.0,
        "beta": 8.0,
        "temperature": 4.0,
        "standardize": False,
    }


@pytest.mark.parametrize(
    ("name", "params", "loss"),
    [
        ("nkd", {}, lambda s, t, y: nkd_loss(s, t, y, 1.0, 1.5)),
        ("nkd", {"temperature": 3.0, "gamma": 3.5}, lambda s, t, y: nkd_loss(s, t, y, 3.0, 3.5)),
        ("wttm", {}, lambda s, t, y: wttm_loss(s, t, 0.2)),
        ("wttm", {"gamma": 0.5}, lambda s, t, y: wttm_loss(s, t, 0.5)),
        ("kd", {"standardize": False}, lambda s, t, y: kd_loss(s, t, 4.0)),
        (
            "kd",
            {"temperature": 2.0, "standardize": True},
            lambda s, t, y: kd_loss(*standardize_pair(s, t), 2.0),
        ),
        (
            "dkd",
            {"alpha": 9.0, "beta": 72.0, "temperature": 2.0, "standardize": True},
            lambda s, t, y: dkd_loss(*standardize_pair(s, t), y, 9.0, 72.0, 2.0),
        ),
    ],
)
def test_terms_compute_their_losses(name, params, loss):
    student, teacher, labels = outputs()
    term = build_term(name, context(student, teacher), params)
    assert term.requires_teacher
    expected = loss(student.logits, teacher.logits, labels)
    torch.testing.assert_close(term(StepOutputs(student, teacher, labels)), expected)


def test_standardize_changes_kd_and_dkd_and_makes_them_scale_free():
    student, teacher, labels = outputs(classes=10)
    scaled = ModelOutput(student.logits * 7 + 3, student.embedding)
    for name in ("kd", "dkd"):
        plain = build_term(name, context(student, teacher), {})
        standard = build_term(name, context(student, teacher), {"standardize": True})
        a = standard(StepOutputs(student, teacher, labels))
        assert a.item() != pytest.approx(plain(StepOutputs(student, teacher, labels)).item())
        assert standard(StepOutputs(scaled, teacher, labels)).item() == pytest.approx(
            a.item(), rel=1e-4
        )


def test_standardized_term_keeps_the_teacher_constant_and_promotes_bf16():
    student, teacher, labels = outputs()
    s = student.logits.bfloat16().requires_grad_()
    t = teacher.logits.bfloat16().requires_grad_()
    for name in ("kd", "dkd"):
        term = build_term(name, context(student, teacher), {"standardize": True})
        step = StepOutputs(
            ModelOutput(s, student.embedding), ModelOutput(t, teacher.embedding), labels
        )
        loss = term(step)
        assert loss.dtype == torch.float32
        loss.backward()
        assert t.grad is None and s.grad is not None


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nkd", {"temperature": 0.0}, "nkd: temperature must be positive"),
        ("nkd", {"temperature": math.nan}, "nkd: temperature must be positive"),
        ("nkd", {"gamma": -1.0}, "nkd: gamma must be non-negative"),
        ("nkd", {"gamma": math.inf}, "nkd: gamma must be non-negative"),
        ("wttm", {"gamma": 0.0}, "wttm: gamma must be positive"),
        ("wttm", {"gamma": math.nan}, "wttm: gamma must be positive"),
        ("wttm", {"gamma": True}, "wttm: gamma must be positive"),
        ("wttm", {"temperature": 4.0}, "unknown parameter 'temperature'"),
        ("nkd", {"beta": 1.0}, "unknown parameter 'beta'"),
        ("kd", {"standardize": "yes"}, "kd: standardize must be true or false, found 'yes'"),
        ("kd", {"standardize": 1}, "kd: standardize must be true or false, found 1"),
        ("dkd", {"standardize": None}, "dkd: standardize must be true or false"),
    ],
)
def test_terms_refuse_bad_parameters(name, params, message):
    student, teacher, _ = outputs()
    with pytest.raises(ValueError, match=message):
        build_term(name, context(student, teacher), params)


@pytest.mark.parametrize("name", ["nkd", "wttm", "kd", "dkd"])
def test_terms_refuse_a_teacher_with_other_classes_and_need_a_teacher(name):
    student, teacher, labels = outputs(teacher_classes=10)
    message = f"{name}: the student has 4 classes but the teacher has 10"
    with pytest.raises(ValueError, match=message):
        build_term(name, context(student, teacher), {})
    term = build_term(name, BuildContext(4, student), {})
    with pytest.raises(ValueError, match="needs a teacher"):
        term(StepOutputs(student, None, labels))


def test_nkd_reads_class_labels_and_refuses_multi_label_targets():
    student, teacher, _ = outputs()
    assert build_term("nkd", context(student, teacher), {}).reads_class_labels
    with pytest.raises(ValueError, match="'nkd' reads one class label per image"):
        Distiller([TermConfig("nkd", 1.0)], context(student, teacher, multi_label=True))
    with pytest.raises(ValueError, match="'dkd' reads one class label per image"):
        Distiller(
            [TermConfig("dkd", 1.0, 0, {"standardize": True})],
            context(student, teacher, multi_label=True),
        )
    # wttm and kd read no labels: they distill multi-label students too.
    for name in ("wttm", "kd"):
        term = build_term(name, context(student, teacher, multi_label=True), {})
        assert not term.reads_class_labels
    with pytest.raises(ValueError, match="nkd: needs at least 2 classes, found 1"):
        one = ModelOutput(torch.randn(6, 1), torch.randn(6, 3))
        build_term("nkd", context(one, one), {})


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("nkd", {}),
        ("nkd", {"temperature": 3.0, "gamma": 3.5}),
        ("wttm", {}),
        ("kd", {"temperature": 2.0, "standardize": True}),
        ("dkd", {"temperature": 2.0, "standardize": True}),
    ],
)
def test_term_trains_a_student_towards_the_teacher(name, params):
    losses, t, labels = train_towards_teacher(name, params, steps=60)
    # Each loss is >= 0 with its infimum 0, except NKD's, which holds cross-entropies: its
    # non-target part is >= gamma * T^2 * the teacher's non-target entropy (its infimum).
    floor = 0.0
    if name == "nkd":
        args = (params.get("temperature", 1.0), params.get("gamma", 1.5))
        floor = (nkd_loss(t, t, labels, *args) - nkd_loss(t, t, labels, args[0], 0.0)).item()
    history = [loss - floor for loss in losses]
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.5 * history[0]
