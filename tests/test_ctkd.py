"""CTKD: the gradient reversal, the curriculum, the term against a slow reference, its
numerical guard (DKD + a learned temperature on extreme logits), the composition, a run."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import write_digits_config
from ndkd import ModelOutput
from ndkd.cli import main
from ndkd.config import TermConfig
from ndkd.losses.ctkd import (
    bounded_temperature,
    curriculum_lambda,
    reverse_gradient,
)
from ndkd.losses.dkd import dkd_loss
from ndkd.losses.kd import kd_loss
from ndkd.methods import BuildContext, Distiller, StepOutputs, build_term, term_parameters

# --- gradient reversal ------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward(scale):
    x = torch.randn(5, 3, requires_grad=True)
    upstream = torch.randn(5, 3)
    y = reverse_gradient(x, scale)
    assert torch.equal(y, x)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -scale * upstream)
    # Through a function: d/dx f(GRL(x)) = -scale * f'(x).
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    (reverse_gradient(x, scale) ** 3).sum().backward()
    torch.testing.assert_close(x.grad, -scale * 3 * x.detach() ** 2)
    with pytest.raises(ValueError, match="scale must be non-negative"):
        reverse_gradient(x, -1.0)


# --- curriculum ---------------------------------------------------------------------------


def public_cosine_multiplier(epoch, decay_max, decay_min, loops):
    """The authors' CosineDecay.get_value, written out: the GRL's multiplier in an epoch
    (their epochs count from 1); with decay_max 0 and decay_min -1 it falls from 0 to -1."""
    i = min(max(epoch, 0), loops)
    value = (math.cos(i * math.pi / loops) + 1.0) * 0.5
    return value * (decay_max - decay_min) + decay_min


@pytest.mark.parametrize("loops", [10, 5, 1])  # CIFAR-100 and ImageNet scripts, and 1
def test_curriculum_lambda_matches_the_public_cosine_loop(loops):
    for epoch in range(0, 3 * loops + 3):  # their loop: for epoch in 1..EPOCHS (0 checked too)
        expected = -public_cosine_multiplier(epoch, 0.0, -1.0, loops)
        assert curriculum_lambda(epoch, 0.0, 1.0, loops) == pytest.approx(expected, abs=1e-12)
    assert curriculum_lambda(1, 0.0, 1.0, 10) == pytest.approx(0.5 * (1 - math.cos(math.pi / 10)))
    assert curriculum_lambda(-3, 0.0, 1.0, loops) == 0.0


def test_curriculum_lambda_general_range_and_refusals():
    # Eq. 11 with lambda_min/max: the public multiplier with decay_max=-min, decay_min=-max.
    for epoch in range(14):
        expected = -public_cosine_multiplier(epoch, -0.2, -1.5, 8)
        assert curriculum_lambda(epoch, 0.2, 1.5, 8) == pytest.approx(expected, abs=1e-12)
    assert curriculum_lambda(0, 0.2, 1.5, 0) == 1.5  # no curriculum: lambda_max at once
    with pytest.raises(ValueError, match="lambda_min must be non-negative"):
        curriculum_lambda(1, -0.1, 1.0, 10)
    with pytest.raises(ValueError, match="curriculum loops must be an integer >= 0"):
        curriculum_lambda(1, 0.0, 1.0, -1)


# --- losses at a tensor temperature ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_tensor_temperature_losses_equal_the_float_temperature_losses(shape):
    s, t = torch.randn(6, 7, dtype=torch.float64) * 3, torch.randn(6, 7, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (6,))
    tau = torch.full(shape, 3.5, dtype=torch.float64)
    torch.testing.assert_close(kd_loss(s, t, tau), kd_loss(s, t, 3.5))
    torch.testing.assert_close(dkd_loss(s, t, y, 1.0, 8.0, tau), dkd_loss(s, t, y, 1.0, 8.0, 3.5))
    per = dkd_loss(s, t, y, 1.0, 8.0, tau, reduction="none")
    torch.testing.assert_close(per, dkd_loss(s, t, y, 1.0, 8.0, 3.5, reduction="none"))


def test_per_sample_temperature_is_each_samples_own_and_gradchecks():
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 4, 2, 2])
    tau = (torch.rand(4, 1, dtype=torch.float64) * 5 + 1).requires_grad_()
    per = kd_loss(s, t, tau, reduction="none")
    for i in range(4):
        torch.testing.assert_close(per[i], kd_loss(s[i : i + 1], t[i : i + 1], tau[i].item()))
    per = dkd_loss(s, t, y, 1.0, 2.0, tau.squeeze(1), reduction="none")
    for i in range(4):
        one = dkd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], 1.0, 2.0, tau[i].item())
        torch.testing.assert_close(per[i], one)
    assert torch.autograd.gradcheck(lambda a, b: kd_loss(a, t, b), (s, tau))
    assert torch.autograd.gradcheck(lambda a, b: dkd_loss(a, t, y, 1.0, 2.0, b), (s, tau))


def test_tensor_temperature_refusals():
    s = torch.randn(4, 5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        kd_loss(s, s, -4.0)
    with pytest.raises(ValueError, match=r"scalar, \[1\], \[4\] or \[4, 1\], found shape \(3,\)"):
        kd_loss(s, s, torch.ones(3))
    with pytest.raises(ValueError, match=r"found shape \(4, 2\)"):
        dkd_loss(s, s, torch.zeros(4, dtype=torch.long), 1.0, 2.0, torch.ones(4, 2))
    with pytest.raises(ValueError, match="t_start must be positive"):
        bounded_temperature(torch.zeros(1), 0.0, 20.0)


def test_bounded_temperature_stays_in_its_range_and_is_float32():
    raw = torch.tensor([-1e30, -50.0, 0.0, 1.0, 50.0, 1e30], dtype=torch.bfloat16)
    tau = bounded_temperature(raw, 1.0, 20.0)
    assert tau.dtype == torch.float32
    assert torch.all(tau >= 1.0) and torch.all(tau <= 21.0)
    assert tau[2].item() == pytest.approx(11.0)
    assert tau[3].item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-6)  # 15.62


# --- the term against a slow reference ------------------------------------------------------


def slow_kd(student, teacher, tau):
    """Per sample, from probabilities (the authors' instance-wise KL_Loss, without 1e-7)."""
    total = 0.0
    for i in range(student.shape[0]):
        p_t = F.softmax(teacher[i] / tau[i], dim=0)
        log_p_s = F.log_softmax(student[i] / tau[i], dim=0)
        total = total + tau[i] ** 2 * (p_t * (p_t.log() - log_p_s)).sum()
    return total / student.shape[0]


def slow_dkd(student, teacher, labels, alpha, beta, tau):
    """Per sample, DKD's definition from probabilities: TCKD on (p_y, 1 - p_y), NCKD on
    p_j / (1 - p_y) for j != y."""
    total = 0.0
    for i in range(student.shape[0]):
        y = int(labels[i])
        p_s, p_t = F.softmax(student[i] / tau[i], 0), F.softmax(teacher[i] / tau[i], 0)
        b_s = torch.stack((p_s[y], 1 - p_s[y]))
        b_t = torch.stack((p_t[y], 1 - p_t[y]))
        keep = torch.arange(p_s.shape[0]) != y
        q_s, q_t = p_s[keep] / (1 - p_s[y]), p_t[keep] / (1 - p_t[y])
        tckd = (b_t * (b_t.log() - b_s.log())).sum()
        nckd = (q_t * (q_t.log() - q_s.log())).sum()
        total = total + (alpha * tckd + beta * nckd) * tau[i] ** 2
    return total / student.shape[0]


def context_for(student, teacher):
    return BuildContext(student.logits.shape[1], student, teacher)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("loss", ["kd", "dkd"])
@pytest.mark.parametrize("mode", ["global", "instance"])
def test_term_value_and_gradients_match_a_slow_reference(mode, loss, dtype):
    torch.manual_seed(1)
    batch, classes = 6, 5
    s_values = (torch.randn(batch, classes) * 4).to(dtype)
    t_values = (torch.randn(batch, classes) * 4).to(dtype)
    labels = torch.randint(0, classes, (batch,))
    probe = ModelOutput(s_values.float(), torch.randn(batch, 3))
    params = {"mode": mode, "loss": loss, "alpha": 1.5, "beta": 3.0, "hidden_dim": 8}
    term = build_term(
        "ctkd", context_for(probe, ModelOutput(t_values.float(), probe.embedding)), params
    )
    with torch.no_grad():  # random weights, so the instance temperatures differ
        for p in term.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    epoch = 3  # lambda(3 + 1) of a 10-epoch curriculum
    lam = curriculum_lambda(4, 0.0, 1.0, 10)

    student = s_values.clone().requires_grad_()
    step = StepOutputs(
        ModelOutput(student, probe.embedding),
        ModelOutput(t_values, probe.embedding),
        labels,
        epoch=epoch,
    )
    value = term(step)
    value.backward()
    assert value.dtype == torch.float32 and term.last_lambda == pytest.approx(lam)

    # The reference: float64 on the same values, no reversal, the temperature written out.
    ref_student = s_values.double().clone().requires_grad_()
    ref_params = [p.detach().double().clone().requires_grad_() for p in term.parameters()]
    teacher64 = t_values.double()
    if mode == "global":
        (raw,) = ref_params
        raw = raw.expand(batch)
    else:
        w1, b1, w2, b2 = ref_params
        x = torch.cat((F.softmax(teacher64, 1), F.softmax(s_values.double(), 1)), 1)
        raw = (torch.relu(x @ w1.T + b1) @ w2.T + b2).squeeze(1)
    tau = 1.0 + 20.0 * torch.sigmoid(raw)
    if loss == "kd":
        expected = slow_kd(ref_student, teacher64, tau)
    else:
        expected = slow_dkd(ref_student, teacher64, labels, 1.5, 3.0, tau)
    expected.backward()
    assert (len(set(tau.detach().tolist())) == 1) == (mode == "global")
    torch.testing.assert_close(term.last_temperature.flatten().expand(batch), tau.float().detach())

    torch.testing.assert_close(value, expected.float().detach(), rtol=1e-5, atol=1e-6)
    assert student.grad.dtype == dtype
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(student.grad, ref_student.grad.to(dtype), **tolerance)
    # The temperature parameters get the reversed gradient, -lambda times the reference's.
    # d(tau^2 KL)/d tau is a difference of nearly equal terms at tau ~ 15 (tau^2 KL tends to a
    # constant), so float32 loses ~1e-5 of its scale: compared at 2e-4 of the largest entry.
    for got, ref in zip(term.parameters(), ref_params):
        scale = ref.grad.abs().max().item()
        assert scale > 0
        expected_grad = (-lam * ref.grad).float()
        torch.testing.assert_close(got.grad, expected_grad, rtol=1e-3, atol=2e-4 * scale)


# --- the numerical guard: DKD + CTKD on extreme logits --------------------------------------


def public_dkd_at(student, teacher, labels, alpha, beta, tau):
    """The public formulation (log of summed softmax masses), as CTKD's DKD.py writes it."""
    gt = F.one_hot(labels, student.shape[1]).bool()
    p_s, p_t = F.softmax(student / tau, 1), F.softmax(teacher / tau, 1)

    def binary(p):
        return torch.stack([(p * gt).sum(1), (p * ~gt).sum(1)], 1)

    tckd = F.kl_div(torch.log(binary(p_s)), binary(p_t), reduction="sum") * tau**2
    nckd = F.kl_div(
        F.log_softmax(student / tau - 1000.0 * gt, 1),
        F.softmax(teacher / tau - 1000.0 * gt, 1),
        reduction="sum",
    )
    return (alpha * tckd + beta * nckd * tau**2) / len(labels)


@pytest.mark.parametrize("mode", ["global", "instance"])
def test_dkd_ctkd_on_extreme_bf16_logits_stays_finite_over_200_steps(mode):
    torch.manual_seed(0)
    batch, classes, dim = 32, 10, 16
    labels = torch.arange(batch) % classes
    teacher_logits = F.one_hot(labels, classes).float() * 1e4  # saturated, sure of the label
    features = torch.randn(batch, dim)
    # A student sure of the wrong classes: logits of order 1e3 and more, in bf16.
    weight = torch.nn.Parameter(torch.randn(classes, dim) * 3.0)
    probe = ModelOutput(torch.zeros(batch, classes), features)
    context = context_for(probe, ModelOutput(teacher_logits, features))
    term = build_term("ctkd", context, {"loss": "dkd", "mode": mode, "beta": 8.0})
    optimizer = torch.optim.SGD(
        [weight, *term.parameters()], lr=0.05, momentum=0.9, weight_decay=5e-4
    )
    temperatures = []
    for step in range(200):
        logits = ((features @ weight.T) * 1e3).bfloat16()
        if step == 0:  # the public formulation is not finite on these logits
            tau0 = torch.tensor(1 + 20 / (1 + math.exp(-1)))
            naive = public_dkd_at(logits.float(), teacher_logits, labels, 1.0, 8.0, tau0)
            assert not torch.isfinite(naive)
        outputs = StepOutputs(
            ModelOutput(logits, features), ModelOutput(teacher_logits, features), labels
        )
        outputs.epoch = 50  # past the curriculum: the full reversed gradient, lambda = 1
        loss = term(outputs)
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss), step
        for p in [weight, *term.parameters()]:
            assert torch.isfinite(p.grad).all(), step
        optimizer.step()
        assert torch.isfinite(weight).all() and all(
            torch.isfinite(p).all() for p in term.parameters()
        )
        tau = term.last_temperature
        assert torch.all(tau >= 1.0) and torch.all(tau <= 21.0)
        temperatures.append(tau.mean().item())
    assert term.last_lambda == 1.0
    assert max(temperatures) - min(temperatures) > 0.1  # the reversed gradient moved T


# --- building, composition, a run -----------------------------------------------------------


def test_term_builds_through_the_registry_with_the_authors_defaults_and_refusals():
    assert term_parameters("ctkd") == {
        "loss": "kd",
        "mode": "global",
        "alpha": 1.0,
        "beta": 2.0,
        "t_start": 1.0,
        "t_range": 20.0,
        "init_logit": 1.0,
        "lambda_min": 0.0,
        "lambda_max": 1.0,
        "curriculum_epochs": 10,
        "curriculum_from": 1,
        "hidden_dim": 256,
    }
    student = ModelOutput(torch.randn(4, 6), torch.randn(4, 3))
    teacher = ModelOutput(torch.randn(4, 6), torch.randn(4, 5))
    context = context_for(student, teacher)
    kd = build_term("ctkd", context, {})
    assert kd.requires_teacher and not kd.reads_class_labels
    assert sum(p.numel() for p in kd.parameters()) == 1
    dkd = build_term("ctkd", context, {"loss": "dkd", "mode": "instance", "hidden_dim": 7})
    assert dkd.reads_class_labels
    assert sum(p.numel() for p in dkd.parameters()) == 12 * 7 + 7 + 7 + 1
    for params, message in [
        ({"loss": "dist"}, "loss must be one of"),
        ({"mode": "batch"}, "mode must be one of"),
        ({"t_start": 0.0}, "ctkd: t_start must be positive"),
        ({"t_range": math.inf}, "ctkd: t_range must be positive"),
        ({"init_logit": math.nan}, "init_logit must be a finite number"),
        ({"lambda_max": -1.0}, "ctkd: lambda_max must be non-negative"),
        ({"curriculum_epochs": 2.5}, "curriculum_epochs must be an integer >= 0"),
        ({"curriculum_from": 2}, "curriculum_from must be 0 or 1"),
        ({"beta": math.nan}, "ctkd: beta must be non-negative"),
        ({"hidden_dim": 0}, "hidden_dim must be an integer >= 1"),
        ({"temperature": 4.0}, "unknown parameter 'temperature'"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_term("ctkd", context, params)
    wide = ModelOutput(torch.randn(4, 9), torch.randn(4, 5))
    with pytest.raises(ValueError, match="student has 6 classes but the teacher has 9"):
        build_term("ctkd", context_for(student, wide), {})
    with pytest.raises(ValueError, match="reads one class label per image"):
        multi = BuildContext(6, student, teacher, multi_label=True)
        Distiller([TermConfig("ctkd", 1.0, 0, {"loss": "dkd"})], multi)
    Distiller([TermConfig("ctkd", 1.0)], BuildContext(6, student, teacher, multi_label=True))


def test_distiller_passes_the_epoch_to_the_curriculum():
    student = ModelOutput(torch.randn(8, 5), torch.randn(8, 3))
    teacher = ModelOutput(torch.randn(8, 5), torch.randn(8, 3))
    method = Distiller(
        [TermConfig("ce", 1.0), TermConfig("ctkd", 0.9, 0, {"curriculum_epochs": 10})],
        context_for(student, teacher),
    )
    term = method.terms["ctkd"]
    step = StepOutputs(student, teacher, torch.arange(8) % 5)
    for epoch in [0, 1, 4, 8, 9, 10, 239]:
        losses = method(step, epoch)
        public = -public_cosine_multiplier(epoch + 1, 0.0, -1.0, 10)  # their epochs from 1
        assert term.last_lambda == pytest.approx(public)
        expected = 0.9 * kd_loss(student.logits, teacher.logits, term.last_temperature.item())
        torch.testing.assert_close(losses["ctkd"], expected)
    assert step.epoch == 0  # the caller's outputs are left as they were
    assert method.terms["ctkd"].lambda_at(9) == 1.0


@pytest.mark.parametrize(
    "params", ["loss: kd", "loss: dkd, mode: instance, beta: 8.0, hidden_dim: 16"]
)
def test_one_epoch_ndkd_train_on_digits_with_ce_and_ctkd(tmp_path, digits_teacher, params):
    checkpoint, _ = digits_teacher
    terms = ["{name: ce, weight: 0.1}", f"{{name: ctkd, weight: 0.9, {params}}}"]
    config = write_digits_config(tmp_path, terms, teacher=checkpoint, batch_size=256)
    assert main(["train", "-c", str(config)]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(records) == 1 and math.isfinite(records[0]["loss/ctkd"])
    assert records[0]["loss/ctkd"] > 0
