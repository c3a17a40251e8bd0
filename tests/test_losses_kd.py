"""kd_loss against the definition KL(q_t || q_s) * T^2, computed sample by sample."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ndkd.losses import (
    dist_loss,
    dkd_loss,
    infonce_direction_loss,
    kd_loss,
    pkt_loss,
    rkd_loss,
    sifn_loss,
)


def reference_kd(student, teacher, temperature):
    total = 0.0
    for zs, zt in zip(student.tolist(), teacher.tolist()):
        ps = [math.exp(v / temperature) for v in zs]
        pt = [math.exp(v / temperature) for v in zt]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total += sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    return total / len(student) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("classes", [2, 10])
def test_matches_definition(temperature, classes):
    s = torch.randn(8, classes, dtype=torch.float64) * 3
    t = torch.randn(8, classes, dtype=torch.float64) * 3
    got = kd_loss(s, t, temperature).item()
    assert got == pytest.approx(reference_kd(s, t, temperature), rel=1e-10)


def test_matches_public_batchmean_form():
    s, t = torch.randn(16, 100), torch.randn(16, 100)
    public = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    torch.testing.assert_close(kd_loss(s, t, 4.0), public)


def test_per_sample_and_zero_when_equal():
    s = torch.randn(5, 7)
    per = kd_loss(s, s.clone(), 2.0, reduction="none")
    assert per.shape == (5,)
    assert per.abs().max().item() < 1e-6


def test_saturated_teacher_is_finite():
    s = torch.randn(4, 10, requires_grad=True)
    t = torch.zeros(4, 10)
    t[:, 0] = 1e4
    loss = kd_loss(s, t, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_gradcheck_and_teacher_constant():
    s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, 4.0), (s,))
    kd_loss(s, t, 4.0).backward()
    assert t.grad is None


def test_bf16_logits_give_fp32_loss():
    s, t = torch.randn(8, 100), torch.randn(8, 100)
    got = kd_loss(s.bfloat16(), t.bfloat16(), 4.0)
    assert got.dtype == torch.float32
    expected = reference_kd(s.bfloat16().double(), t.bfloat16().double(), 4.0)
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_class_count_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 100\)"):
        kd_loss(torch.randn(4, 10), torch.randn(4, 100), 4.0)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.randn(4, 10), torch.randn(4, 10), 0.0)


TEMPERED = {
    "kd_loss": lambda s, t, y, tau: kd_loss(s, t, tau),
    "dkd_loss": lambda s, t, y, tau: dkd_loss(s, t, y, 1.0, 8.0, tau),
    "dist_loss": lambda s, t, y, tau: dist_loss(s, t, 1.0, 1.0, tau),
    "infonce_direction_loss": lambda s, t, y, tau: infonce_direction_loss(s, y, t, tau),
}


@pytest.mark.parametrize("name", sorted(TEMPERED))
@pytest.mark.parametrize("temperature", [math.nan, math.inf, -math.inf, 0.0, -1.0, True])
def test_tempered_losses_refuse_a_temperature_that_is_not_a_positive_number(name, temperature):
    """A NaN temperature passes ``temperature <= 0``; it must be refused, not return NaN."""
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="temperature must be positive and finite"):
        TEMPERED[name](s, t, y, temperature)
    assert torch.isfinite(TEMPERED[name](s, t, y, 2.0))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, t, y: dkd_loss(s, t, y, math.nan, 8.0, 4.0), "alpha must be non-negative"),
        (lambda s, t, y: dkd_loss(s, t, y, 1.0, -1.0, 4.0), "beta must be non-negative"),
        (lambda s, t, y: dist_loss(s, t, 1.0, math.inf, 4.0), "gamma must be non-negative"),
        (lambda s, t, y: rkd_loss(s, t, math.nan), "distance_weight must be non-negative"),
        (lambda s, t, y: pkt_loss(s, t, eps=0.0), "eps must be positive"),
        (lambda s, t, y: sifn_loss(s, step=math.nan), "step must be positive"),
    ],
)
def test_loss_weights_and_constants_refuse_nan_inf_and_negatives(call, message):
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=message):
        call(s, t, y)
