"""Mixup / CutMix of training batches, and the terms that follow the mixing weights: the
ND loss with class means mixed by the same coefficients (as the public DeiT++ code), and
cross-entropy on soft targets; each against a per-sample reference loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ndkd import nd_loss
from ndkd.methods import BuildContext, StepOutputs, build_term
from ndkd.models.output import ModelOutput
from ndkd.tasks import BatchMixer, ClassificationTask


def test_mixup_mixes_with_the_reversed_batch():
    torch.manual_seed(3)
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    mixed, weights = BatchMixer(6, mixup=0.8)(images, labels)
    for i in range(6):
        lam = float(weights[i, labels[i]])
        other = 5 - i
        assert float(weights[i, labels[other]]) == pytest.approx(1 - lam)
        torch.testing.assert_close(mixed[i], lam * images[i] + (1 - lam) * images[other])
    torch.testing.assert_close(weights.sum(1), torch.ones(6))


def test_cutmix_pastes_a_box_and_weighs_by_its_area():
    torch.manual_seed(5)
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 16, 16)
    mixed, weights = BatchMixer(4, cutmix=1.0)(images, torch.arange(4))
    for i in range(4):
        from_other = (mixed[i] == 3 - i).float().mean()
        assert float(weights[i, 3 - i]) == pytest.approx(float(from_other))
        assert float(weights[i, i]) == pytest.approx(1 - float(from_other))


def test_an_unmixed_batch_has_one_hot_weights_and_switching_is_seeded():
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([1, 0, 2, 1])
    same, weights = BatchMixer(3, mixup=1.0, prob=0.0)(images, labels)
    assert same is images and torch.equal(weights, F.one_hot(labels, 3).float())
    mixer = BatchMixer(3, mixup=0.8, cutmix=1.0)
    torch.manual_seed(0)
    first = mixer(images, labels)
    torch.manual_seed(0)
    second = mixer(images, labels)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(ValueError):
        BatchMixer(3)


def test_nd_loss_with_mixed_class_means_against_a_loop():
    torch.manual_seed(0)
    batch, classes, dim = 6, 5, 7
    s = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
    t = torch.randn(batch, dim, dtype=torch.float64) * 2
    centers = torch.randn(classes, dim, dtype=torch.float64)
    labels = torch.randint(0, classes, (batch,))
    lam = torch.rand(batch, dtype=torch.float64)
    weights = F.one_hot(labels, classes).double() * lam[:, None]
    weights += F.one_hot(labels.flip(0), classes).double() * (1 - lam[:, None])
    loss = nd_loss(s, t, weights, centers)
    expected = 0.0
    rows = s.detach()
    for i in range(batch):
        mixed = lam[i] * centers[labels[i]] + (1 - lam[i]) * centers[labels.flip(0)[i]]
        direction = mixed / mixed.norm()
        expected += 1 - float(rows[i] @ direction) / max(float(rows[i].norm()), float(t[i].norm()))
    assert float(loss.detach()) == pytest.approx(expected / batch, rel=1e-12)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    # one-hot weights are the plain labels
    hard = F.one_hot(labels, classes).double()
    torch.testing.assert_close(nd_loss(s, t, hard, centers), nd_loss(s, t, labels, centers))
    with pytest.raises(ValueError, match="classes"):
        nd_loss(s, t, hard[:, :3], centers)


def test_ce_and_nd_terms_follow_the_mixing_weights():
    torch.manual_seed(1)
    probe = ModelOutput(torch.randn(2, 4), torch.randn(2, 8))
    from ndkd import ClassMeans

    means = ClassMeans(torch.rand(4, 8) + 0.1)
    context = BuildContext(4, probe, probe, means)
    ce = build_term("ce", context, {"label_smoothing": 0.1})
    nd = build_term("nd", context, {})
    student = ModelOutput(torch.randn(3, 4), torch.randn(3, 8))
    teacher = ModelOutput(torch.randn(3, 4), torch.randn(3, 8))
    labels = torch.tensor([0, 2, 3])
    weights = torch.tensor([[0.7, 0, 0, 0.3], [0, 0, 1.0, 0], [0.3, 0, 0, 0.7]])
    rows = StepOutputs(student, teacher, labels, mix_weights=weights)
    smoothed = weights * 0.9 + 0.1 / 4
    expected = -(smoothed * student.logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(ce(rows), expected)
    torch.testing.assert_close(
        nd(rows), nd_loss(student.embedding, teacher.embedding, weights, means.means)
    )


def test_the_task_mixes_training_batches_only():
    task = ClassificationTask(BatchMixer(3, mixup=1.0))
    raw = (torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    evaluation = task.to_device(raw, torch.device("cpu"), None)
    assert evaluation.mix_weights is None and torch.equal(evaluation.images, raw[0])
    training = task.to_device(raw, torch.device("cpu"), None, train=True)
    assert training.mix_weights.shape == (4, 3) and torch.equal(training.labels, raw[1])
