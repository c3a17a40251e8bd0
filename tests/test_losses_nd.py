"""nd_loss against an obvious per-sample reference (Eq. 5-7), gradients and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

import ndkd.losses.nd as nd_module
from ndkd import nd_loss
from ndkd.losses import reduce_per_sample


def reference_nd(s, t, labels, centers, reduction="batch"):
    """Slow, obvious loop: one sample at a time, Python floats."""
    losses, by_class = [], {}
    for i in range(s.shape[0]):
        c = centers[int(labels[i])].tolist()
        c_norm = math.sqrt(sum(v * v for v in c))
        e = [v / c_norm for v in c]
        si, ti = s[i].tolist(), t[i].tolist()
        s_norm = math.sqrt(sum(v * v for v in si))
        t_norm = math.sqrt(sum(v * v for v in ti))
        value = 1.0 - sum(a * b for a, b in zip(si, e)) / max(s_norm, t_norm)
        losses.append(value)
        by_class.setdefault(int(labels[i]), []).append(value)
    if reduction == "none":
        return torch.tensor(losses, dtype=torch.float64)
    if reduction == "batch":
        return sum(losses) / len(losses)
    return sum(sum(v) / len(v) for v in by_class.values()) / len(by_class)


def make_inputs(batch=16, dim=8, classes=5, dtype=torch.float64):
    s = torch.randn(batch, dim, dtype=dtype)
    t = torch.randn(batch, dim, dtype=dtype) * 3
    labels = torch.randint(0, classes, (batch,))
    centers = torch.rand(classes, dim, dtype=dtype) + 0.1
    return s, t, labels, centers


@pytest.mark.parametrize("reduction", ["batch", "class"])
def test_matches_reference(reduction):
    s, t, labels, centers = make_inputs()
    expected = reference_nd(s, t, labels, centers, reduction)
    assert nd_loss(s, t, labels, centers, reduction).item() == pytest.approx(expected, abs=1e-12)


def test_per_sample_matches_reference():
    s, t, labels, centers = make_inputs(batch=9)
    got = nd_loss(s, t, labels, centers, reduction="none")
    assert got.shape == (9,)
    torch.testing.assert_close(got, reference_nd(s, t, labels, centers, "none"))


def test_eq5_and_eq6_branches():
    centers = torch.tensor([[2.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    # sample 0: student norm 1 < teacher norm 4 -> Eq. 5: 1 - s.e/||t|| = 1 - 1/4
    # sample 1: student norm 8 > teacher norm 4 -> Eq. 6: 1 - cos = 1 - 0.6
    s = torch.tensor([[1.0, 0.0], [4.8, 6.4]], dtype=torch.float64)
    t = torch.tensor([[0.0, 4.0], [4.0, 0.0]], dtype=torch.float64)
    got = nd_loss(s, t, labels, centers, reduction="none")
    torch.testing.assert_close(got, torch.tensor([0.75, 0.4], dtype=torch.float64))


def test_gradcheck_float64():
    s, t, labels, centers = make_inputs(batch=6, dim=5, classes=3)
    s.requires_grad_(True)
    for reduction in ("batch", "class", "none"):
        assert torch.autograd.gradcheck(
            lambda x, r=reduction: nd_loss(x, t, labels, centers, r), (s,)
        )


def test_no_gradient_into_teacher_or_centers():
    s, t, labels, centers = make_inputs()
    for x in (s, t, centers):
        x.requires_grad_(True)
    nd_loss(s, t, labels, centers).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None and centers.grad is None


def test_zero_student_feature_gives_finite_gradient_towards_center():
    centers = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    s = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    loss = nd_loss(s, t, torch.tensor([0]), centers)
    loss.backward()
    assert loss.item() == pytest.approx(1.0)
    # d/ds (1 - s.e/||t||) = -e/||t|| with e = (0.6, 0.8), ||t|| = 2
    torch.testing.assert_close(s.grad, torch.tensor([[-0.3, -0.4]], dtype=torch.float64))


def test_zero_student_and_teacher_rows_get_the_class_mean_norm():
    """s = t = 0: the class mean's norm stands in for the teacher's, so Eq. 5 pushes s
    along the class mean with gradient -c / ||c||^2 (not 0/0 nor a 1e12 gradient)."""
    centers = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    s = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    loss = nd_loss(s, torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0, 1]), centers, "none")
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.ones(2, dtype=torch.float64))
    expected = -centers / centers.square().sum(dim=1, keepdim=True)  # [-0.12, -0.16], [-1, 0]
    torch.testing.assert_close(s.grad, expected)


def degenerate_reference(s, t, label, centers):
    """The per-sample loss written out with the degenerate-teacher rule: ||t|| <= 1e-3 ||c||
    takes ||c|| instead."""
    c = centers[label]
    t_norm = t.norm() if t.norm() > 1e-3 * c.norm() else c.norm()
    return 1.0 - torch.dot(s, c / c.norm()) / torch.maximum(s.norm(), t_norm)


def test_degenerate_teacher_rows_and_bounded_gradient():
    torch.manual_seed(0)
    centers = torch.rand(3, 6, dtype=torch.float64) + 0.1
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    c_norms = centers.norm(dim=1)[labels]
    # teacher rows: zero, tiny (degenerate), just above the threshold (exact formula), normal
    scales = torch.tensor([0.0, 1e-6, 2e-3, 1.0, 1e-4, 3e-3], dtype=torch.float64)
    t = torch.randn(6, 6, dtype=torch.float64)
    t = t / t.norm(dim=1, keepdim=True) * (scales * c_norms).unsqueeze(1)
    for student_scale in (0.0, 1e-9, 1e-4, 1.0):
        s = (torch.randn(6, 6, dtype=torch.float64) * student_scale).requires_grad_(True)
        got = nd_loss(s, t, labels, centers, "none")
        expected = torch.stack(
            [degenerate_reference(s[i], t[i], labels[i], centers) for i in range(6)]
        )
        torch.testing.assert_close(got, expected)
        got.sum().backward()
        assert torch.isfinite(s.grad).all()
        # |dl_i/ds_i| <= 1 / max(||s_i||, ||t_i||) <= 1000 / ||c_y||
        assert (s.grad.norm(dim=1) <= 1000 / c_norms * (1 + 1e-9)).all()
    # rows above the threshold follow the plain formula of the paper
    exact = [2, 3, 5]
    s = torch.randn(6, 6, dtype=torch.float64) * 1e-3
    literal = reference_nd(s[exact], t[exact], labels[exact], centers, "none")
    torch.testing.assert_close(nd_loss(s, t, labels, centers, "none")[exact], literal)


def test_zero_class_mean_has_no_direction():
    centers = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    s = torch.tensor([[0.0, 0.0], [2.0, 1.0], [0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    loss = nd_loss(s, t, torch.tensor([0, 0, 0]), centers, "none")
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.ones(3))
    torch.testing.assert_close(s.grad, torch.zeros(3, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_backward_equals_autograd_reference(dtype):
    """The fused per-row Function (nd_loss's default) against plain autograd: same values and
    gradients on every branch: Eq. 5, Eq. 6, degenerate teachers, zero student rows."""
    torch.manual_seed(0)
    batch, dim = 64, 16
    s = torch.randn(batch, dim, dtype=dtype)
    s[::7] = 0.0
    centers = torch.rand(batch, dim, dtype=dtype) + 0.1
    inv_norms = centers.norm(dim=1).reciprocal()
    teacher_norms = torch.rand(batch, dtype=dtype) * 2 * s.norm(dim=1).max()
    teacher_norms[::5] = centers.norm(dim=1)[::5]  # a degenerate teacher's stand-in
    grad_out = torch.randn(batch, dtype=dtype)
    results = []
    for per_sample in (nd_module._per_sample_autograd, nd_module._NDPerSample.apply):
        x = s.clone().requires_grad_(True)
        value = per_sample(x, centers, inv_norms, teacher_norms)
        value.backward(grad_out)
        results.append((value.detach(), x.grad))
    torch.testing.assert_close(results[1], results[0])
    assert nd_module._per_sample == nd_module._NDPerSample.apply  # the default path


def test_gradcheck_both_gradient_paths():
    torch.manual_seed(0)
    s = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    centers = torch.rand(6, 5, dtype=torch.float64) + 0.1
    inv_norms = centers.norm(dim=1).reciprocal()
    teacher_norms = torch.tensor([0.1, 5.0, 0.5, 4.0, 2.0, 0.01], dtype=torch.float64)
    for per_sample in (nd_module._per_sample_autograd, nd_module._NDPerSample.apply):
        assert torch.autograd.gradcheck(
            lambda x, f=per_sample: f(x, centers, inv_norms, teacher_norms), (s,)
        )


def test_large_student_norm_only_rotates():
    """Above the teacher norm (Eq. 6) the gradient is orthogonal to s: no norm pressure."""
    centers = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    nd_loss(s, t, torch.tensor([0]), centers).backward()
    assert torch.dot(s.grad[0], s.detach()[0]).abs().item() < 1e-12
    assert s.grad[0, 0] < 0  # still rotates towards the class mean


def test_small_student_norm_is_pushed_up():
    centers = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([[0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 10.0]], dtype=torch.float64)
    nd_loss(s, t, torch.tensor([0]), centers).backward()
    assert torch.dot(s.grad[0], s.detach()[0]) < 0  # descent increases the norm


def test_class_reduction_with_absent_classes_and_c2():
    s, t, _, centers = make_inputs(batch=7, classes=2)
    labels = torch.tensor([1, 1, 1, 1, 1, 1, 0])
    got = nd_loss(s, t, labels, centers, "class").item()
    assert got == pytest.approx(reference_nd(s, t, labels, centers, "class"), abs=1e-12)
    # ten classes, only two present: absent ones must not dilute the mean
    centers10 = torch.rand(10, s.shape[1], dtype=torch.float64) + 0.1
    labels = torch.tensor([3, 3, 3, 8, 8, 8, 8])
    got = nd_loss(s, t, labels, centers10, "class").item()
    assert got == pytest.approx(reference_nd(s, t, labels, centers10, "class"), abs=1e-12)


def test_single_sample():
    s, t, labels, centers = make_inputs(batch=1)
    for reduction in ("batch", "class"):
        got = nd_loss(s, t, labels, centers, reduction).item()
        assert got == pytest.approx(reference_nd(s, t, labels, centers), abs=1e-12)


def test_empty_batch_is_zero():
    centers = torch.rand(3, 4)
    loss = nd_loss(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), centers)
    assert loss.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs_computed_in_fp32(dtype):
    s, t, labels, centers = make_inputs(batch=32, dim=64, dtype=torch.float32)
    got = nd_loss(s.to(dtype), t.to(dtype), labels, centers.to(dtype))
    assert got.dtype == torch.float32
    expected = reference_nd(
        s.to(dtype).double(), t.to(dtype).double(), labels, centers.to(dtype).double()
    )
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_float64_stays_float64():
    s, t, labels, centers = make_inputs()
    assert nd_loss(s, t, labels, centers).dtype == torch.float64


def test_bad_inputs_are_refused_clearly():
    s, t, labels, centers = make_inputs(batch=4, dim=8, classes=5)
    with pytest.raises(ValueError, match="EmbeddingProjector"):
        nd_loss(torch.randn(4, 6), torch.randn(4, 6), labels, centers)
    with pytest.raises(ValueError, match="same shape"):
        nd_loss(s, torch.randn(4, 9), labels, centers)
    with pytest.raises(ValueError, match=r"\[0, 4\].*found values in \[0, 7\]"):
        nd_loss(s, t, torch.tensor([0, 1, 7, 2]), centers)
    with pytest.raises(ValueError, match="shape \\[4\\]"):
        nd_loss(s, t, torch.tensor([0, 1]), centers)
    with pytest.raises(TypeError, match="integer"):
        nd_loss(s, t, labels.float(), centers)
    with pytest.raises(ValueError, match="reduction"):
        nd_loss(s, t, labels, centers, reduction="sum")
    with pytest.raises(ValueError, match="2-D"):
        nd_loss(s[0], t[0], labels[:1], centers)


def test_reduce_per_sample_class_mean_by_hand():
    values = torch.tensor([1.0, 3.0, 10.0])
    labels = torch.tensor([2, 2, 0])
    # class 2: mean 2; class 0: mean 10; classes 1, 3 absent -> (2 + 10) / 2
    assert reduce_per_sample(values, labels, 4, "class").item() == pytest.approx(6.0)
    assert reduce_per_sample(values, labels, None, "class").item() == pytest.approx(6.0)
