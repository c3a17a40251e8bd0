"""Multi-label ranking metrics against sklearn, the VOC devkit's formulas and the reference
CP/CR/CF1/OP/OR/OF1 loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from ndkd.tasks.ranking import AP_DEFINITIONS, average_precision, threshold_metrics


def _problem(n: int = 60, c: int = 6, levels: int | None = None, seed: int = 0):
    """Scores ``[n, c]`` (``levels`` distinct values: many ties; None: no ties), positives,
    and an ignore mask (about 10% of the entries)."""
    generator = torch.Generator().manual_seed(seed)
    if levels is None:
        scores = torch.rand(n, c, generator=generator, dtype=torch.float64)
    else:
        scores = torch.randint(0, levels, (n, c), generator=generator).double() / levels
    positives = torch.rand(n, c, generator=generator) < 0.35
    ignore = torch.rand(n, c, generator=generator) < 0.1
    positives[0] = ignore[0] = False
    positives[0, :] = True  # every class has a kept positive
    return scores, positives, ignore


def _curve(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at each distinct threshold, from the highest score down."""
    n_pos = truth.sum()
    recall, precision = [], []
    for threshold in sorted(set(scores.tolist()), reverse=True):
        called = scores >= threshold
        tp, fp = (called & truth).sum(), (called & ~truth).sum()
        recall.append(tp / n_pos)
        precision.append(tp / (tp + fp))
    return np.array(recall), np.array(precision)


def _devkit_all_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """The VOC 2010+ devkit's ``voc_ap``: envelope from the right, sum of dR x P."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _devkit_11_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """The VOC2007 devkit's 11-point AP (recall levels exactly k/10)."""
    total = 0.0
    for k in range(11):
        reached = recall >= k / 10
        total += (precision[reached].max() if reached.any() else 0.0) / 11
    return total


def _per_class(reference, scores, positives, ignore) -> list[float]:
    values = []
    for c in range(scores.shape[1]):
        kept = ~ignore[:, c].numpy()
        truth = positives[:, c].numpy()[kept]
        values.append(reference(scores[:, c].numpy()[kept], truth))
    return values


@pytest.mark.parametrize("levels", [None, 7])
def test_plain_equals_sklearn_with_ties_and_ignored_entries(levels):
    scores, positives, ignore = _problem(levels=levels)
    expected = _per_class(lambda s, t: average_precision_score(t, s), scores, positives, ignore)
    got = average_precision(scores, positives, ignore, "plain")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    no_ignore = [
        average_precision_score(positives[:, c].numpy(), scores[:, c].numpy())
        for c in range(scores.shape[1])
    ]
    np.testing.assert_allclose(average_precision(scores, positives).numpy(), no_ignore, rtol=1e-12)


@pytest.mark.parametrize("levels", [None, 5])
def test_interpolated_equals_the_devkit(levels):
    scores, positives, ignore = _problem(levels=levels)
    expected = _per_class(lambda s, t: _devkit_all_point(*_curve(s, t)), scores, positives, ignore)
    got = average_precision(scores, positives, ignore, "interpolated")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("levels", [None, 5])
def test_11_point_equals_the_devkit_formula(levels):
    scores, positives, ignore = _problem(n=40, levels=levels)
    expected = _per_class(lambda s, t: _devkit_11_point(*_curve(s, t)), scores, positives, ignore)
    got = average_precision(scores, positives, ignore, "11point")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_11_point_hits_the_recall_levels_exactly():
    # 10 positives, each ranked first among the rest: recall 0.3 is reached exactly
    scores = torch.arange(20, 0, -1, dtype=torch.float64).unsqueeze(1)
    positives = torch.zeros(20, 1, dtype=torch.bool)
    positives[[0, 1, 2, 5, 7, 9, 11, 13, 15, 17]] = True
    recall, precision = _curve(scores[:, 0].numpy(), positives[:, 0].numpy())
    got = float(average_precision(scores, positives, definition="11point"))
    assert got == pytest.approx(_devkit_11_point(recall, precision), rel=1e-12)


def test_perfect_and_worst_rankings():
    scores = torch.tensor([[4.0], [3.0], [2.0], [1.0]])
    best = torch.tensor([[True], [True], [False], [False]])
    for definition in AP_DEFINITIONS:
        assert float(average_precision(scores, best, definition=definition)) == 1.0
    worst = best.flip(0)
    assert float(average_precision(scores, worst, definition="plain")) == pytest.approx(
        (1 / 3 + 2 / 4) / 2
    )


@pytest.mark.parametrize("definition", AP_DEFINITIONS)
def test_row_order_does_not_matter(definition):
    scores, positives, ignore = _problem(n=80, levels=4)
    order = torch.randperm(80, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        average_precision(scores[order], positives[order], ignore[order], definition),
        average_precision(scores, positives, ignore, definition),
    )


@pytest.mark.parametrize("definition", AP_DEFINITIONS)
def test_a_class_without_kept_positives_is_nan(definition):
    scores, positives, ignore = _problem()
    positives[:, 1] = False
    ignore[:, 2] = positives[:, 2]  # its positives are all "difficult"
    ap = average_precision(scores, positives, ignore, definition)
    assert math.isnan(ap[1]) and math.isnan(ap[2])
    assert not ap[[0, 3, 4, 5]].isnan().any()
    empty = average_precision(torch.zeros(0, 2), torch.zeros(0, 2, dtype=torch.bool))
    assert empty.isnan().all()


def test_bad_arguments_are_refused():
    scores, positives, _ = _problem()
    with pytest.raises(ValueError, match="unknown AP definition"):
        average_precision(scores, positives, definition="voc")
    with pytest.raises(ValueError, match="positives must be a boolean"):
        average_precision(scores, positives.float())
    with pytest.raises(ValueError, match="ignore must be a boolean"):
        threshold_metrics(scores, positives, positives[:5])
    with pytest.raises(ValueError, match="samples, classes"):
        average_precision(scores[:, 0], positives[:, 0])


def _reference_threshold_metrics(scores, positives, ignore, threshold):
    """The reference code's ``coco_metric`` loop over classes, on the kept entries."""
    n_class = scores.shape[1]
    nc, np_, ng = np.zeros(n_class), np.zeros(n_class), np.zeros(n_class)
    for k in range(n_class):
        kept = ~ignore[:, k]
        s, t = scores[kept, k], positives[kept, k].astype(float)
        ng[k] = np.sum(t == 1)
        np_[k] = np.sum(s >= threshold)
        nc[k] = np.sum(t * (s >= threshold))
    np_[np_ == 0] = 1
    op, overall_recall = np.sum(nc) / np.sum(np_), np.sum(nc) / np.sum(ng)
    cp, cr = np.sum(nc / np_) / n_class, np.sum(nc / ng) / n_class
    return {
        "cp": cp,
        "cr": cr,
        "cf1": 2 * cp * cr / (cp + cr),
        "op": op,
        "or": overall_recall,
        "of1": 2 * op * overall_recall / (op + overall_recall),
    }


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_threshold_metrics_equal_the_reference_loop(threshold):
    scores, positives, ignore = _problem(n=50, levels=10)
    scores[:, 3] = 0.0  # a class never predicted: Np counts as 1
    expected = _reference_threshold_metrics(
        scores.numpy(), positives.numpy(), ignore.numpy(), threshold
    )
    got = threshold_metrics(scores, positives, ignore, threshold)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert float(got[key]) == pytest.approx(value, rel=1e-12), key


def test_recall_skips_classes_without_positives_and_f1_of_zeros_is_zero():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    positives = torch.tensor([[False, False], [True, False]])
    got = threshold_metrics(scores, positives)
    assert float(got["cr"]) == 0.0  # class 0 only: its positive scored 0.2
    assert float(got["cp"]) == 0.0 and float(got["cf1"]) == 0.0
    assert float(got["op"]) == 0.0 and float(got["of1"]) == 0.0
