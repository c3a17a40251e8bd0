"""The paper's baselines (Eq. 1-4) against per-sample references, gradients, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from ndkd import cosine_direction_loss, infonce_direction_loss, l2_feature_loss, sifn_loss


def norm(v):
    return math.sqrt(sum(x * x for x in v))


def cos(a, b):
    na, nb = norm(a), norm(b)
    return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b)) / (na * nb)


def reduce(values, labels, reduction):
    if reduction == "batch":
        return sum(values) / len(values)
    groups = {}
    for v, y in zip(values, labels):
        groups.setdefault(int(y), []).append(v)
    return sum(sum(g) / len(g) for g in groups.values()) / len(groups)


def inputs(batch=12, dim=6, classes=4):
    s = torch.randn(batch, dim, dtype=torch.float64)
    t = torch.randn(batch, dim, dtype=torch.float64) * 2
    labels = torch.randint(0, classes, (batch,))
    centers = torch.randn(classes, dim, dtype=torch.float64)
    return s, t, labels, centers


@pytest.mark.parametrize("reduction", ["batch", "class"])
def test_cosine_eq1(reduction):
    s, _, labels, centers = inputs()
    values = [1 - cos(s[i].tolist(), centers[int(labels[i])].tolist()) for i in range(len(s))]
    got = cosine_direction_loss(s, labels, centers, reduction).item()
    assert got == pytest.approx(reduce(values, labels, reduction), abs=1e-12)


@pytest.mark.parametrize("reduction", ["batch", "class"])
@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_infonce_eq2(reduction, tau):
    s, _, labels, centers = inputs()
    values = []
    for i in range(len(s)):
        sims = [cos(s[i].tolist(), c.tolist()) / tau for c in centers]
        values.append(-(sims[int(labels[i])] - math.log(sum(math.exp(v) for v in sims))))
    got = infonce_direction_loss(s, labels, centers, tau, reduction).item()
    assert got == pytest.approx(reduce(values, labels, reduction), abs=1e-10)


@pytest.mark.parametrize("reduction", ["batch", "class"])
def test_l2_eq3(reduction):
    s, t, labels, _ = inputs()
    values = [
        sum((a - b) ** 2 for a, b in zip(s[i].tolist(), t[i].tolist())) for i in range(len(s))
    ]
    got = l2_feature_loss(s, t, labels, reduction).item()
    assert got == pytest.approx(reduce(values, labels, reduction), abs=1e-10)


def test_sifn_eq4_with_earlier_features():
    s, previous, _, _ = inputs()
    r = 0.7
    values = [(norm(previous[i].tolist()) + r - norm(s[i].tolist())) ** 2 for i in range(len(s))]
    assert sifn_loss(s, previous, r).item() == pytest.approx(sum(values) / len(values), abs=1e-10)


def test_sifn_without_snapshot_pushes_norm_up_by_step():
    s = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    loss = sifn_loss(s, step=0.5)
    assert loss.item() == pytest.approx(0.25)  # (||s|| + r - ||s||)^2
    loss.backward()
    assert (s.grad * s.detach()).sum(dim=1).lt(0).all()  # descent grows every norm


def test_gradchecks():
    s, t, labels, centers = inputs(batch=5, dim=4, classes=3)
    s.requires_grad_(True)
    checks = [
        lambda x: cosine_direction_loss(x, labels, centers, "class"),
        lambda x: infonce_direction_loss(x, labels, centers, 0.5),
        lambda x: l2_feature_loss(x, t, labels, "class"),
        lambda x: sifn_loss(x, t, 0.3),
    ]
    for fn in checks:
        assert torch.autograd.gradcheck(fn, (s,))


def test_constants_get_no_gradient():
    s, t, labels, centers = inputs()
    s.requires_grad_(True)
    t.requires_grad_(True)
    centers.requires_grad_(True)
    total = (
        cosine_direction_loss(s, labels, centers)
        + infonce_direction_loss(s, labels, centers)
        + l2_feature_loss(s, t)
        + sifn_loss(s, t)
    )
    total.backward()
    assert t.grad is None and centers.grad is None and s.grad is not None


def test_zero_student_feature_is_finite():
    centers = torch.randn(3, 4)
    s = torch.zeros(2, 4, requires_grad=True)
    labels = torch.tensor([0, 2])
    losses = [cosine_direction_loss(s, labels, centers), infonce_direction_loss(s, labels, centers)]
    assert losses[0].item() == pytest.approx(1.0)
    assert losses[1].item() == pytest.approx(math.log(3))  # uniform over three classes
    sum(losses).backward()
    assert torch.isfinite(s.grad).all()


def test_c2_single_sample_and_absent_class():
    s, t, _, centers = inputs(batch=1, classes=2)
    labels = torch.tensor([1])
    expected = 1 - cos(s[0].tolist(), centers[1].tolist())
    for reduction in ("batch", "class"):
        assert cosine_direction_loss(s, labels, centers, reduction).item() == pytest.approx(
            expected
        )


def test_refusals():
    s, t, labels, centers = inputs(batch=4, dim=6, classes=4)
    with pytest.raises(ValueError, match="EmbeddingProjector"):
        cosine_direction_loss(torch.randn(4, 3), labels, centers)
    with pytest.raises(ValueError, match="temperature"):
        infonce_direction_loss(s, labels, centers, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        l2_feature_loss(s, t[:, :3])
    with pytest.raises(ValueError, match="labels"):
        sifn_loss(s, reduction="class")
    with pytest.raises(ValueError, match="non-negative"):
        l2_feature_loss(s, t, torch.tensor([0, -1, 0, 0]), "class")
