"""MLKD (Jin, Wang, Lin, CVPR 2023): the loss against a per-sample / per-pair loop written from
the paper's definitions, the authors' confidence masks, edge cases, the term, and a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers import write_digits_config
from ndkd import ModelOutput
from ndkd.config import TermConfig, load_config
from ndkd.experiment import train
from ndkd.losses.kd import kd_loss
from ndkd.losses.mlkd import (
    batch_alignment_loss,
    class_alignment_loss,
    confidence_masks,
    instance_alignment_loss,
    mlkd_loss,
)
from ndkd.methods import BuildContext, Distiller, StepOutputs, build_term, term_parameters

TEMPS = (2.0, 3.0, 4.0, 5.0, 6.0)
LEVELS = ("instance", "batch", "class")

# --- the reference: loops over samples, sample pairs and class pairs ------------------------


def log_softmax_row(z: torch.Tensor, temperature: float) -> list[torch.Tensor]:
    """``log softmax(z / T)`` of one sample, class by class (scalar ops, differentiable)."""
    top = float(z.detach().max())
    exps = [torch.exp((z[c] - top) / temperature) for c in range(len(z))]
    log_total = torch.log(sum(exps))
    return [(z[c] - top) / temperature - log_total for c in range(len(z))]


def reference(s, t, temps, sample_mask=None, class_mask=None, mode="scale", levels=LEVELS):
    """MLKD from the paper's definitions: per temperature, KL per sample times T^2 (mean over
    B), the Gram entries G_ij = sum_c p_ic p_jc per sample pair (squared error summed, over B),
    the class entries M_cd = sum_i p_ic p_id per class pair (squared error summed, over C);
    masks as the authors' code uses them ("scale": times the kept fraction) or element-wise."""
    batch, classes = s.shape
    w = [1.0] * batch if sample_mask is None else [float(m) for m in sample_mask]
    v = [1.0] * classes if class_mask is None else [float(m) for m in class_mask]
    select = mode == "select"
    wi = w if select else [1.0] * batch
    vc = v if select else [1.0] * classes
    sample_factor = 1.0 if select else sum(w) / max(batch, 1)
    class_factor = 1.0 if select else sum(v) / classes
    total = s.new_zeros(())
    for temperature in temps:
        log_ps = [log_softmax_row(s[i], temperature) for i in range(batch)]
        log_pt = [log_softmax_row(t[i].detach(), temperature) for i in range(batch)]
        ps = [[torch.exp(x) for x in row] for row in log_ps]
        pt = [[torch.exp(x) for x in row] for row in log_pt]
        if "instance" in levels:
            kl = 0.0
            for i in range(batch):
                sample = sum(pt[i][c] * (log_pt[i][c] - log_ps[i][c]) for c in range(classes))
                kl = kl + wi[i] * sample
            total = total + sample_factor * kl / max(batch, 1) * temperature**2
        if "batch" in levels:
            gram = 0.0
            for i in range(batch):
                for j in range(batch):
                    g_t = sum(pt[i][c] * pt[j][c] for c in range(classes))
                    g_s = sum(ps[i][c] * ps[j][c] for c in range(classes))
                    gram = gram + wi[i] * wi[j] * (g_t - g_s) ** 2
            total = total + sample_factor * gram / max(batch, 1)
        if "class" in levels:
            corr = 0.0
            for c in range(classes):
                for d in range(classes):
                    m_t = sum(pt[i][c] * pt[i][d] for i in range(batch))
                    m_s = sum(ps[i][c] * ps[i][d] for i in range(batch))
                    corr = corr + vc[c] * vc[d] * (m_t - m_s) ** 2
            total = total + class_factor * corr / classes
    return total


def reference_value_and_grad(s, t, **kwargs):
    x = s.detach().double().requires_grad_()
    value = reference(x, t.detach().double(), **kwargs)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def value_and_grad(s, t, **kwargs):
    x = s.detach().clone().requires_grad_()
    value = mlkd_loss(x, t, **kwargs)
    value.backward()
    return value.detach(), x.grad


def random_masks(batch, classes, generator):
    sample = torch.rand(batch, generator=generator) < 0.6
    sample[0] = True
    cls = torch.rand(classes, generator=generator) < 0.6
    cls[-1] = True
    return sample, cls


# --- the loss against the reference -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["none", "scale", "select"])
@pytest.mark.parametrize("shape", [(6, 5), (9, 12), (3, 2)])
def test_value_and_gradient_match_the_loop_reference(shape, mode, dtype):
    generator = torch.Generator().manual_seed(sum(shape))
    s = (torch.randn(*shape, generator=generator) * 3).to(dtype)
    t = (torch.randn(*shape, generator=generator) * 3).to(dtype)
    masks = {}
    if mode != "none":
        sample, cls = random_masks(*shape, generator)
        masks = {"sample_mask": sample, "class_mask": cls, "mode": mode}
    got, grad = value_and_grad(s, t, temperatures=TEMPS, **masks)
    want, want_grad = reference_value_and_grad(s, t, temps=TEMPS, **masks)
    assert got.dtype == dtype and grad.dtype == dtype
    exact = dtype == torch.float64
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if exact else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(got.double(), want, **tolerance)
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if exact else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(grad.double(), want_grad, **tolerance)


@pytest.mark.parametrize("levels", [("instance",), ("batch",), ("class",), ("class", "batch")])
def test_each_level_matches_the_reference(levels):
    s, t = torch.randn(7, 6, dtype=torch.float64) * 2, torch.randn(7, 6, dtype=torch.float64) * 2
    got, grad = value_and_grad(s, t, temperatures=(1.0, 4.0), levels=levels)
    want, want_grad = reference_value_and_grad(s, t, temps=(1.0, 4.0), levels=levels)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    single = {
        "instance": instance_alignment_loss,
        "batch": batch_alignment_loss,
        "class": class_alignment_loss,
    }
    parts = sum(single[level](s, t, (1.0, 4.0)) for level in levels)
    torch.testing.assert_close(got, parts)


def test_bf16_matches_the_fp32_reference_of_the_rounded_values():
    generator = torch.Generator().manual_seed(3)
    s = (torch.randn(8, 10, generator=generator) * 3).bfloat16()
    t = (torch.randn(8, 10, generator=generator) * 3).bfloat16()
    sample, cls = random_masks(8, 10, generator)
    for mode in ("scale", "select"):
        kwargs = {"sample_mask": sample, "class_mask": cls, "mode": mode}
        got, grad = value_and_grad(s, t, temperatures=TEMPS, **kwargs)
        assert got.dtype == torch.float32 and grad.dtype == torch.bfloat16
        want, want_grad = reference_value_and_grad(s.float(), t.float(), temps=TEMPS, **kwargs)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
        # the gradient is computed in fp32 and rounded once to bf16 (8 bits of mantissa)
        torch.testing.assert_close(grad.double(), want_grad, rtol=1e-2, atol=1e-4)


def test_instance_level_is_kd_summed_over_temperatures():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    kd = sum(kd_loss(s, t, temperature) for temperature in TEMPS)
    torch.testing.assert_close(instance_alignment_loss(s, t, TEMPS), kd)
    torch.testing.assert_close(mlkd_loss(s, t, TEMPS, levels=["instance"]), kd)


def test_gradcheck_teacher_constant_identical_predictions_give_zero():
    s = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    sample, cls = torch.tensor([1, 0, 1, 1, 0]).bool(), torch.tensor([1, 1, 0, 1]).bool()
    for mode in ("scale", "select"):
        assert torch.autograd.gradcheck(
            lambda x, mode=mode: mlkd_loss(x, t, (1.0, 3.0), sample, cls, mode), (s,)
        )
    mlkd_loss(s, t).backward()
    assert t.grad is None and s.grad is not None
    same = s.detach().clone().requires_grad_()
    loss = mlkd_loss(same, same.detach())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert same.grad.abs().max().item() < 1e-12


def test_the_mask_fraction_scales_each_level_in_the_authors_mode():
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    sample = torch.tensor([1, 1, 0, 1, 0, 0]).bool()  # keeps 1/2 of the samples
    cls = torch.tensor([1, 0, 0, 0]).bool()  # keeps 1/4 of the classes
    got = mlkd_loss(s, t, TEMPS, sample, cls, "scale")
    want = (
        0.5 * instance_alignment_loss(s, t, TEMPS)
        + 0.5 * batch_alignment_loss(s, t, TEMPS)
        + 0.25 * class_alignment_loss(s, t, TEMPS)
    )
    torch.testing.assert_close(got, want)


# --- the authors' confidence masks ------------------------------------------------------------


@pytest.mark.parametrize("percentile", [0.0, 30.0, 50.0, 100.0])
@pytest.mark.parametrize("batch", [1, 2, 7, 64])
def test_confidence_masks_match_numpy_percentiles(batch, percentile):
    logits = torch.randn(batch, 10) * 4
    sample, cls = confidence_masks(logits, percentile)
    p = torch.softmax(logits.double(), dim=1).numpy()
    confidence, class_sum = p.max(axis=1), p.sum(axis=0)
    want_sample = confidence <= np.percentile(confidence, percentile)
    want_class = class_sum <= np.percentile(class_sum, percentile)
    assert sample.dtype == torch.bool and cls.dtype == torch.bool
    assert sample.tolist() == want_sample.tolist() and cls.tolist() == want_class.tolist()
    assert sample.any() and cls.any()  # at least the least confident sample and class
    if percentile == 50.0 and batch > 1:
        assert int(sample.sum()) == math.ceil(batch / 2)  # the lower half, median included


def test_confidence_masks_keep_the_uncertain_half():
    logits = torch.tensor([[9.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 0.3]])
    sample, cls = confidence_masks(logits)
    assert sample.tolist() == [False, True, False, True]
    assert cls.tolist() == [False, True]  # class 0 holds more of the summed probability
    with pytest.raises(ValueError, match=r"percentile must be in \[0, 100\]"):
        confidence_masks(logits, 101.0)
    empty = confidence_masks(torch.zeros(0, 3))
    assert empty[0].shape == (0,) and empty[1].tolist() == [True, True, True]


# --- edge cases --------------------------------------------------------------------------------


def test_all_predictions_masked():
    s = torch.randn(5, 6, requires_grad=True)
    t = torch.randn(5, 6)
    none_kept, no_class = torch.zeros(5, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)
    for mode in ("scale", "select"):
        loss = mlkd_loss(s, t, TEMPS, none_kept, no_class, mode)
        (grad,) = torch.autograd.grad(loss, s)
        assert loss.item() == 0.0 and torch.isfinite(grad).all() and grad.abs().max() == 0
    # masked samples only: the class level still counts in full
    loss = mlkd_loss(s, t, TEMPS, none_kept, None, "select")
    torch.testing.assert_close(loss, class_alignment_loss(s, t, TEMPS))


def test_two_classes_one_sample_and_an_empty_batch():
    two = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    got, grad = value_and_grad(*two, temperatures=TEMPS)
    want, want_grad = reference_value_and_grad(*two, temps=TEMPS)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad)
    one = torch.randn(1, 5, dtype=torch.float64), torch.randn(1, 5, dtype=torch.float64)
    sample, cls = confidence_masks(one[1])
    assert sample.tolist() == [True]  # one sample is its own median
    got, grad = value_and_grad(*one, temperatures=TEMPS, sample_mask=sample, class_mask=cls)
    want, want_grad = reference_value_and_grad(
        *one, temps=TEMPS, sample_mask=sample, class_mask=cls
    )
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, want_grad)
    empty = torch.zeros(0, 5, requires_grad=True)
    loss = mlkd_loss(empty, empty.detach(), TEMPS, *confidence_masks(empty.detach()))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 5)


def test_saturated_logits_stay_finite():
    s = torch.tensor([[0.0, 1e4, 0.0], [3e4, -3e4, 0.0]], requires_grad=True)
    t = torch.tensor([[1e4, 0.0, 0.0], [0.0, 0.0, 5.0]])
    loss = mlkd_loss(s, t, (1.0, 4.0), *confidence_masks(t))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_loss_refusals():
    s = torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 100\)"):
        mlkd_loss(s, torch.randn(4, 100))
    with pytest.raises(ValueError, match="temperatures must be positive"):
        mlkd_loss(s, s, (4.0, 0.0))
    with pytest.raises(ValueError, match="at least one temperature"):
        mlkd_loss(s, s, ())
    with pytest.raises(ValueError, match="list of temperatures"):
        mlkd_loss(s, s, 4.0)
    with pytest.raises(ValueError, match="mode must be one of scale, select"):
        mlkd_loss(s, s, mode="median")
    with pytest.raises(ValueError, match="levels must be a non-empty subset"):
        mlkd_loss(s, s, levels=["instance", "pixel"])
    with pytest.raises(ValueError, match="must not repeat"):
        mlkd_loss(s, s, levels=["batch", "batch"])
    with pytest.raises(ValueError, match=r"the sample mask must have shape \[4\]"):
        mlkd_loss(s, s, sample_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"the class mask must have shape \[10\]"):
        mlkd_loss(s, s, class_mask=torch.ones(4, dtype=torch.bool))


# --- the term ----------------------------------------------------------------------------------


def context(classes=10, teacher_classes=None):
    student = ModelOutput(torch.randn(6, classes), torch.randn(6, 3))
    teacher = ModelOutput(torch.randn(6, teacher_classes or classes), torch.randn(6, 3))
    return BuildContext(classes, student, teacher)


def test_term_defaults_and_value():
    assert term_parameters("mlkd") == {
        "temperatures": (2.0, 3.0, 4.0, 5.0, 6.0),
        "mask": "scale",
        "mask_percentile": 50.0,
        "levels": ("instance", "batch", "class"),
        "standardize": False,
    }
    ctx = context()
    term = build_term("mlkd", ctx, {})
    assert term.requires_teacher and not term.reads_class_labels
    student, teacher = ctx.student_probe, ctx.teacher_probe
    step = StepOutputs(student, teacher, torch.arange(6))
    want = mlkd_loss(student.logits, teacher.logits, TEMPS, *confidence_masks(teacher.logits))
    torch.testing.assert_close(term(step), want)
    method = Distiller([TermConfig("mlkd", 0.9)], ctx)
    torch.testing.assert_close(method(step, 0)["mlkd"], 0.9 * want)
    strong = build_term(
        "mlkd", ctx, {"temperatures": [4, 3, 5], "mask": "none", "levels": ["instance"]}
    )
    kd = sum(kd_loss(student.logits, teacher.logits, temperature) for temperature in (4, 3, 5))
    torch.testing.assert_close(strong(step), kd)
    select = build_term("mlkd", ctx, {"mask": "select", "mask_percentile": 30})
    masks = confidence_masks(teacher.logits, 30.0)
    want = mlkd_loss(student.logits, teacher.logits, TEMPS, *masks, mode="select")
    torch.testing.assert_close(select(step), want)


def test_term_standardize_z_scores_the_instance_level_only():
    """Logit standardization as the authors of LS run MLKD: the KD (instance) level sees the
    Z-scored logits, the batch and class levels and the masks the raw ones."""
    ctx = context()
    student, teacher = ctx.student_probe, ctx.teacher_probe
    step = StepOutputs(student, teacher, torch.arange(6))
    masks = confidence_masks(teacher.logits)

    def z(x):
        return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-7)

    term = build_term("mlkd", ctx, {"standardize": True})
    want = mlkd_loss(z(student.logits), z(teacher.logits), TEMPS, *masks, levels=["instance"])
    want = want + mlkd_loss(
        student.logits, teacher.logits, TEMPS, *masks, levels=["batch", "class"]
    )
    torch.testing.assert_close(term(step), want)
    only_kd = build_term("mlkd", ctx, {"standardize": True, "levels": ["instance"]})
    want = mlkd_loss(z(student.logits), z(teacher.logits), TEMPS, *masks, levels=["instance"])
    torch.testing.assert_close(only_kd(step), want)
    relations = build_term("mlkd", ctx, {"standardize": True, "levels": ["class", "batch"]})
    want = mlkd_loss(student.logits, teacher.logits, TEMPS, *masks, levels=["batch", "class"])
    torch.testing.assert_close(relations(step), want)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"temperatures": []}, "mlkd: temperatures must hold at least one temperature"),
        ({"temperatures": [4.0, -1.0]}, "mlkd: temperatures must be positive"),
        ({"temperatures": [4.0, math.nan]}, "mlkd: temperatures must be positive"),
        ({"temperatures": "4"}, "mlkd: temperatures must be a list"),
        ({"temperatures": [True]}, "mlkd: temperatures must be positive"),
        ({"mask": "median"}, "mlkd: mask must be one of scale, select, none"),
        ({"mask_percentile": 101}, r"mlkd: mask_percentile must be in \[0, 100\]"),
        ({"mask_percentile": math.nan}, r"mlkd: mask_percentile must be in \[0, 100\]"),
        ({"levels": []}, "mlkd: levels must be a non-empty list"),
        ({"levels": ["instance", "logit"]}, "mlkd: levels must be a non-empty list"),
        ({"levels": "class"}, "mlkd: levels must be a non-empty list"),
        ({"levels": ["class", "class"]}, "mlkd: levels must not repeat"),
        ({"standardize": "yes"}, "mlkd: standardize must be true or false"),
        ({"temperature": 4.0}, "unknown parameter 'temperature'"),
    ],
)
def test_term_refuses_bad_params(params, message):
    with pytest.raises(ValueError, match=message):
        build_term("mlkd", context(), params)


def test_term_refuses_a_class_mismatch_and_a_missing_teacher():
    with pytest.raises(ValueError, match="mlkd: the student has 10 classes but the teacher"):
        build_term("mlkd", context(10, 100), {})
    ctx = context()
    term = build_term("mlkd", ctx, {})
    with pytest.raises(ValueError, match="needs a teacher"):
        term(StepOutputs(ctx.student_probe, None, torch.arange(6)))


# --- a run -------------------------------------------------------------------------------------


def test_one_epoch_on_digits_with_ce_and_mlkd(tmp_path, digits_teacher):
    checkpoint, _ = digits_teacher
    terms = [
        "{name: ce, weight: 0.1}",
        "{name: mlkd, weight: 0.9, temperatures: [2, 3, 4, 5, 6], mask: scale}",
    ]
    path = write_digits_config(tmp_path, terms, teacher=checkpoint, batch_size=64)
    train(load_config(path), step_progress=False)
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 1
    record = json.loads(records[0])
    assert math.isfinite(record["loss/mlkd"]) and record["loss/mlkd"] > 0
    resolved = load_config(tmp_path / "run" / "config.yaml")
    assert resolved.terms[1].params["temperatures"] == [2, 3, 4, 5, 6]
