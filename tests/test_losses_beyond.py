"""Logit standardization, NKD and WTTM against slow per-sample references written from their
papers (value and gradient, fp32 and bf16 inputs), the authors' formulations, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ndkd.losses.dkd import dkd_loss
from ndkd.losses.kd import kd_loss
from ndkd.losses.nkd import nkd_loss
from ndkd.losses.standardize import standardize_logits, standardize_pair
from ndkd.losses.wttm import wttm_loss

DTYPES = [torch.float32, torch.bfloat16]

# --- slow references: one sample at a time, probabilities as the papers write them --------


def ref_softmax(z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``exp(z_j / T) / sum_k exp(z_k / T)`` of one sample (shifted by the detached max)."""
    e = torch.exp((z - z.max().detach()) / temperature)
    return e / e.sum()


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``sum_j p_j log(p_j / q_j)`` over the entries with ``p_j > 0``."""
    keep = p > 0
    return (p[keep] * torch.log(p[keep] / q[keep])).sum()


def ref_zscore(z: torch.Tensor, divisor_offset: int = 0, eps: float = 0.0) -> torch.Tensor:
    """Algorithm 1's Z-score of one sample: ``(z - mean) / std``; ``divisor_offset=0`` is the
    paper's std (divisor K), 1 the authors' ``torch.std`` (divisor K - 1); ``eps`` their 1e-7."""
    k = z.shape[0]
    mean = z.sum() / k
    std = torch.sqrt(((z - mean) ** 2).sum() / (k - divisor_offset))
    return (z - mean) / (std + eps)


def ref_standardized_kd(student, teacher, temperature, divisor_offset=1, eps=1e-7):
    """Sun et al.: KL(softmax(Z(t) / tau) || softmax(Z(s) / tau)) * tau^2, batch mean."""
    total = 0
    for zs, zt in zip(student, teacher):
        ps = ref_softmax(ref_zscore(zs, divisor_offset, eps), temperature)
        pt = ref_softmax(ref_zscore(zt, divisor_offset, eps), temperature)
        total = total + ref_kl(pt, ps) * temperature**2
    return total / len(student)


def ref_dkd(student, teacher, labels, alpha, beta, temperature):
    """Zhao et al.: TCKD on (p_y, 1 - p_y), NCKD on p_j / (1 - p_y), j != y; batch mean."""
    total = 0
    for zs, zt, y in zip(student, teacher, labels.tolist()):
        ps, pt = ref_softmax(zs, temperature), ref_softmax(zt, temperature)
        tckd = ref_kl(torch.stack([pt[y], 1 - pt[y]]), torch.stack([ps[y], 1 - ps[y]]))
        rest = [j for j in range(len(zs)) if j != y]
        nckd = ref_kl(pt[rest] / (1 - pt[y]), ps[rest] / (1 - ps[y]))
        total = total + (alpha * tckd + beta * nckd) * temperature**2
    return total / len(labels)


def ref_nkd(student, teacher, labels, temperature, gamma):
    """Yang et al.: -T_t log S_t - gamma * lambda^2 * sum_{i != t} N(T_i^lambda) log N(S_i^lambda),
    with N(.) the non-target probabilities at temperature lambda renormalized to sum to 1."""
    total = 0
    for zs, zt, y in zip(student, teacher, labels.tolist()):
        ps, pt = ref_softmax(zs), ref_softmax(zt)
        target = -pt[y] * torch.log(ps[y])
        rest = [j for j in range(len(zs)) if j != y]
        ps_l, pt_l = ref_softmax(zs, temperature), ref_softmax(zt, temperature)
        ns, nt = ps_l[rest] / ps_l[rest].sum(), pt_l[rest] / pt_l[rest].sum()
        non_target = -(nt * torch.log(ns)).sum()
        total = total + target + gamma * temperature**2 * non_target
    return total / len(labels)


def ref_wttm(student, teacher, gamma, weighted=True):
    """Zheng & Yang: U_gamma(p) * KL(p^gamma / U_gamma(p) || q), U_gamma(p) = sum_j p_j^gamma,
    p the teacher's and q the student's softmax at temperature 1; batch mean."""
    total = 0
    for zs, zt in zip(student, teacher):
        p, q = ref_softmax(zt), ref_softmax(zs)
        powered = p**gamma
        power_sum = powered.sum()
        kl = ref_kl(powered / power_sum, q)
        total = total + (power_sum * kl if weighted else kl)
    return total / len(student)


def value_and_grad(loss_fn, student, teacher):
    """The loss and its gradient w.r.t. the student logits (a fresh leaf of ``student``)."""
    s = student.detach().clone().requires_grad_()
    loss = loss_fn(s, teacher)
    loss.backward()
    return loss.detach(), s.grad


def random_logits(shape, dtype, scale=3.0, seed=0):
    """fp32 logits rounded to ``dtype``; the reference sees the same rounded values in fp64."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator) * scale
    return x.to(dtype), x.to(dtype).double()


def assert_matches(got, expected, dtype, value_rtol=1e-5):
    """Loss value in fp32 (promoted from bf16): tight; gradient: bf16-rounded for bf16 inputs."""
    (value, grad), (ref_value, ref_grad) = got, expected
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(ref_value.item(), rel=value_rtol, abs=1e-6)
    assert grad.dtype == dtype
    scale = ref_grad.abs().max().item()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.double(), ref_grad, rtol=tol, atol=tol * scale + 1e-9)


# --- logit standardization ----------------------------------------------------------------


def test_standardize_is_algorithm_1_and_the_authors_normalize():
    x = torch.randn(6, 10, dtype=torch.float64) * 4 + 2
    paper = torch.stack([ref_zscore(row) for row in x])
    torch.testing.assert_close(standardize_logits(x, eps=0.0, unbiased=False), paper)
    # The authors' normalize(): torch.std (unbiased) with 1e-7 added to it.
    authors = (x - x.mean(dim=1, keepdim=True)) / (1e-7 + x.std(dim=1, keepdim=True))
    torch.testing.assert_close(standardize_logits(x), authors)
    assert standardize_logits(x.float().bfloat16()).dtype == torch.float32
    assert standardize_logits(x).dtype == torch.float64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [3, 10, 100])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_standardized_kd_value_and_gradient_match_the_paper(dtype, classes, temperature):
    s, s_ref = random_logits((5, classes), dtype, seed=1)
    t, t_ref = random_logits((5, classes), dtype, seed=2)
    got = value_and_grad(lambda x, y: kd_loss(*standardize_pair(x, y), temperature), s, t)
    expected = value_and_grad(lambda x, y: ref_standardized_kd(x, y, temperature), s_ref, t_ref)
    assert_matches(got, expected, dtype)


def test_paper_and_code_standard_deviations_differ_by_a_base_temperature_factor():
    s, t = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)
    paper = ref_standardized_kd(s, t, 2.0, divisor_offset=0, eps=0.0)
    code_form = kd_loss(standardize_logits(s, 0.0), standardize_logits(t, 0.0), 2.0)
    # Z_unbiased = Z_biased * sqrt((C - 1) / C): the same as tau' = tau * sqrt(C / (C - 1)).
    tau = 2.0 * math.sqrt(10 / 9)
    same = ref_standardized_kd(s, t, tau, divisor_offset=0, eps=0.0) * (2.0 / tau) ** 2
    assert code_form.item() == pytest.approx(same.item(), rel=1e-10)
    assert code_form.item() != pytest.approx(paper.item(), rel=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_standardized_dkd_value_and_gradient_match_the_paper(dtype):
    s, s_ref = random_logits((6, 10), dtype, seed=3)
    t, t_ref = random_logits((6, 10), dtype, seed=4)
    y = torch.tensor([0, 9, 3, 3, 5, 1])

    def ours(x, z):
        return dkd_loss(*standardize_pair(x, z), y, 9.0, 72.0, 2.0)

    def reference(x, z):
        zs = torch.stack([ref_zscore(row, 1, 1e-7) for row in x])
        zt = torch.stack([ref_zscore(row, 1, 1e-7) for row in z])
        return ref_dkd(zs, zt, y, 9.0, 72.0, 2.0)

    assert_matches(value_and_grad(ours, s, t), value_and_grad(reference, s_ref, t_ref), dtype)


def test_standardized_kd_is_invariant_to_per_sample_shift_and_scale():
    s, t = torch.randn(8, 100, dtype=torch.float64), torch.randn(8, 100, dtype=torch.float64)
    a_s, b_s = torch.rand(8, 1, dtype=torch.float64) * 10 + 0.1, torch.randn(8, 1) * 50
    a_t, b_t = torch.rand(8, 1, dtype=torch.float64) * 10 + 0.1, torch.randn(8, 1) * 50

    def loss(x, z):
        return kd_loss(*standardize_pair(x, z), 2.0)

    base, grad = value_and_grad(loss, s, t)
    moved, moved_grad = value_and_grad(loss, a_s * s + b_s, a_t * t + b_t)
    assert moved.item() == pytest.approx(base.item(), rel=1e-6)
    # d/dx L(Z(a x + b)) = a * dL/dZ(...) / a: the gradient at a*s + b is grad / a.
    torch.testing.assert_close(moved_grad, grad / a_s, rtol=1e-5, atol=1e-9)
    # Unstandardized KD is not invariant (the point of the method).
    assert kd_loss(a_s * s + b_s, a_t * t + b_t, 2.0).item() != pytest.approx(
        kd_loss(s, t, 2.0).item(), rel=1e-2
    )


def test_standardize_edge_cases():
    # Equal logits: zeros (uniform softmax) and a finite gradient (torch.std's is NaN there).
    flat = torch.full((2, 5), 3.0, requires_grad=True)
    z = standardize_logits(flat)
    assert torch.equal(z.detach(), torch.zeros(2, 5))
    loss = kd_loss(z, standardize_logits(torch.randn(2, 5)), 2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(flat.grad).all()
    # Saturated logits: finite, bounded by sqrt(C - 1) in absolute value.
    huge = torch.tensor([[1e4, 0.0, 0.0, -1e4], [3e4, 3e4, 3e4, -3e4]], requires_grad=True)
    z = standardize_logits(huge)
    assert torch.isfinite(z).all() and z.abs().max().item() <= math.sqrt(3) + 1e-6
    kd_loss(z, standardize_logits(torch.randn(2, 4)), 2.0).backward()
    assert torch.isfinite(huge.grad).all()
    # C = 2: only the order of the two logits is left, so the gradient (nearly) vanishes.
    two = torch.tensor([[0.3, 5.0], [-2.0, -7.0]], requires_grad=True)
    z = standardize_logits(two)
    expected = torch.tensor([[-1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2)
    torch.testing.assert_close(z, expected)
    kd_loss(z, standardize_logits(torch.tensor([[1.0, 0.0], [0.0, 1.0]])), 2.0).backward()
    assert two.grad.abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="at least 2 classes, found 1"):
        standardize_logits(torch.randn(3, 1))
    with pytest.raises(ValueError, match="eps must be non-negative"):
        standardize_logits(torch.randn(3, 4), eps=-1.0)
    with pytest.raises(ValueError, match="2-D"):
        standardize_logits(torch.randn(3))


def test_standardize_pair_keeps_the_teacher_constant():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    zs, zt = standardize_pair(s, t)
    assert zs.requires_grad and not zt.requires_grad
    kd_loss(zs, zt, 2.0).backward()
    assert t.grad is None and s.grad is not None


# --- NKD ------------------------------------------------------------------------------------


def authors_nkd(student, teacher, labels, temperature, gamma):
    """The authors' NKDLoss formulation: gather the target, drop it with a boolean mask."""
    label = labels.view(-1, 1)
    n = student.shape[0]
    s_t = F.log_softmax(student, 1).gather(1, label)
    t_t = F.softmax(teacher, 1).gather(1, label)
    loss_t = -(t_t * s_t).mean()
    mask = torch.ones_like(student).scatter_(1, label, 0).bool()
    s_rest, t_rest = student[mask].reshape(n, -1), teacher[mask].reshape(n, -1)
    cross = (F.softmax(t_rest / temperature, 1) * F.log_softmax(s_rest / temperature, 1)).sum(1)
    return loss_t - gamma * temperature**2 * cross.mean()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [2, 3, 10])
@pytest.mark.parametrize(("temperature", "gamma"), [(1.0, 1.5), (3.0, 3.5)])
def test_nkd_value_and_gradient_match_the_paper(dtype, classes, temperature, gamma):
    s, s_ref = random_logits((7, classes), dtype, seed=5)
    t, t_ref = random_logits((7, classes), dtype, seed=6)
    y = torch.arange(7) % classes
    got = value_and_grad(lambda x, z: nkd_loss(x, z, y, temperature, gamma), s, t)
    expected = value_and_grad(lambda x, z: ref_nkd(x, z, y, temperature, gamma), s_ref, t_ref)
    assert_matches(got, expected, dtype)


def test_nkd_matches_the_authors_formulation():
    s, t = torch.randn(16, 100) * 2, torch.randn(16, 100) * 2
    y = torch.randint(0, 100, (16,))
    for temperature, gamma in [(1.0, 1.5), (3.0, 3.5)]:
        torch.testing.assert_close(
            nkd_loss(s, t, y, temperature, gamma), authors_nkd(s, t, y, temperature, gamma)
        )


def test_nkd_two_classes_is_the_target_part_only():
    s = torch.randn(6, 2, requires_grad=True)
    t, y = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 1, 0])
    loss = nkd_loss(s, t, y, 2.0, 5.0)
    loss.backward()
    target = -(F.softmax(t, 1).gather(1, y[:, None]) * F.log_softmax(s, 1).gather(1, y[:, None]))
    torch.testing.assert_close(loss, target.mean())
    torch.testing.assert_close(loss, nkd_loss(s, t, y, 2.0, 0.0))
    assert torch.isfinite(s.grad).all()


def test_nkd_saturated_logits_are_finite_and_exact():
    # Teacher sure of the label, student sure of another class (T = 1, gamma = 1):
    # target part -1 * log p_s(0) = 1e4; non-target part: teacher uniform over {1, 2},
    # student log N = (0, -1e4), so -sum 0.5 * log N = 5e3.
    s = torch.tensor([[0.0, 1e4, 0.0]], requires_grad=True)
    t = torch.tensor([[1e4, 0.0, 0.0]])
    loss = nkd_loss(s, t, torch.tensor([0]), 1.0, 1.0)
    loss.backward()
    assert loss.item() == pytest.approx(1.5e4, rel=1e-6)
    assert torch.isfinite(s.grad).all()
    same = torch.tensor([[3e4, -3e4, 0.0, 5.0]], requires_grad=True)
    loss = nkd_loss(same, same.detach(), torch.tensor([0]), 4.0, 1.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()
    # What remains is the teacher's (constant) entropy: the gradient vanishes at s = t.
    assert same.grad.abs().max().item() < 1e-5


def test_nkd_gradcheck_teacher_constant_and_reductions():
    s = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 5, 2, 2])
    assert torch.autograd.gradcheck(lambda x: nkd_loss(x, t, y, 3.0, 3.5), (s,))
    nkd_loss(s, t, y).backward()
    assert t.grad is None
    per = nkd_loss(s, t, y, reduction="none")
    assert per.shape == (4,)
    torch.testing.assert_close(per.mean(), nkd_loss(s, t, y))
    balanced = nkd_loss(s, t, y, reduction="class")
    torch.testing.assert_close(balanced, (per[0] + per[1] + (per[2] + per[3]) / 2) / 3)


def test_nkd_refusals():
    s, y = torch.randn(4, 10), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 100\)"):
        nkd_loss(s, torch.randn(4, 100), y)
    with pytest.raises(ValueError, match="at least 2 classes, found 1"):
        nkd_loss(torch.randn(4, 1), torch.randn(4, 1), y)
    with pytest.raises(ValueError, match="temperature must be positive"):
        nkd_loss(s, s, y, 0.0)
    with pytest.raises(ValueError, match="gamma must be non-negative"):
        nkd_loss(s, s, y, 1.0, math.nan)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\]"):
        nkd_loss(s, s, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match=r"labels must have shape \[4\]"):
        nkd_loss(s, s, torch.zeros(4, 10, dtype=torch.long))


# --- WTTM -----------------------------------------------------------------------------------


def authors_wttm(student, teacher, gamma):
    """The authors' WTTM formulation: a power of the softmax, renormalized, weighted KL."""
    p_t = torch.softmax(teacher, 1) ** gamma
    norm = p_t.sum(1)
    p_t = p_t / norm[:, None]
    kl = F.kl_div(F.log_softmax(student, 1), p_t, reduction="none").sum(1)
    return (norm * kl).mean()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [2, 10, 100])
@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0])
def test_wttm_value_and_gradient_match_the_paper(dtype, classes, gamma):
    s, s_ref = random_logits((6, classes), dtype, seed=7)
    t, t_ref = random_logits((6, classes), dtype, seed=8)
    got = value_and_grad(lambda x, z: wttm_loss(x, z, gamma), s, t)
    expected = value_and_grad(lambda x, z: ref_wttm(x, z, gamma), s_ref, t_ref)
    assert_matches(got, expected, dtype)
    got = value_and_grad(lambda x, z: wttm_loss(x, z, gamma, weighted=False), s, t)
    expected = value_and_grad(lambda x, z: ref_wttm(x, z, gamma, weighted=False), s_ref, t_ref)
    assert_matches(got, expected, dtype)


def test_wttm_matches_the_authors_formulation_and_its_special_cases():
    s, t = torch.randn(16, 100) * 2, torch.randn(16, 100) * 4
    for gamma in (0.1, 0.3, 0.8):
        torch.testing.assert_close(wttm_loss(s, t, gamma), authors_wttm(s, t, gamma))
    # gamma = 1: no transform, U = 1: KD at T = 1.
    torch.testing.assert_close(wttm_loss(s, t, 1.0), kd_loss(s, t, 1.0))
    # TTM = KL(softmax(t / T) || softmax(s)) with T = 1 / gamma.
    p_t = F.softmax(t / 4.0, 1)
    ttm = F.kl_div(F.log_softmax(s, 1), p_t, reduction="batchmean")
    torch.testing.assert_close(wttm_loss(s, t, 0.25, weighted=False), ttm)
    # The weight U_gamma lies in [1, C^(1 - gamma)]: WTTM >= TTM, per sample.
    per_w = wttm_loss(s, t, 0.25, reduction="none")
    per = wttm_loss(s, t, 0.25, weighted=False, reduction="none")
    ratio = per_w / per
    assert (ratio >= 1 - 1e-6).all() and (ratio <= 100**0.75 + 1e-3).all()


def test_wttm_saturated_logits_are_finite_and_exact():
    # A saturated teacher: p^gamma is one-hot and U = 1, so the loss is -log q_0.
    s = torch.tensor([[0.0, 1e4, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    t = torch.tensor([[1e4, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0]])
    loss = wttm_loss(s, t, 0.2)
    loss.backward()
    expected = -F.log_softmax(s.detach().double(), 1)[:, 0].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.isfinite(s.grad).all()
    same = torch.tensor([[3e4, -3e4, 0.0, 5.0]], requires_grad=True)
    loss = wttm_loss(same, same.detach() / 0.5, 0.5)  # teacher at T = 2 of the student: 0
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-4) and torch.isfinite(same.grad).all()


def test_wttm_gradcheck_teacher_constant_and_refusals():
    s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: wttm_loss(x, t, 0.3), (s,))
    wttm_loss(s, t, 0.3).backward()
    assert t.grad is None
    assert wttm_loss(s, t, 0.3, reduction="none").shape == (3,)
    x = torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 100\)"):
        wttm_loss(x, torch.randn(4, 100), 0.2)
    for gamma in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="gamma must be positive and finite"):
            wttm_loss(x, x, gamma)
    with pytest.raises(ValueError, match='reduction="class" needs the labels'):
        wttm_loss(x, x, 0.2, reduction="class")
