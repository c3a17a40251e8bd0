"""Multi-label ranking metrics on ``[N, C]`` scores: per-class average precision (three
definitions) and the thresholded precision/recall/F1 of multi-label recognition.

Every function works on all classes at once (no loop over samples or classes) and on any
device whose tensors support float64 (the counts are exact integers in float64). Entries
where ``ignore`` is true (VOC's "difficult" pairs) are neither positives nor negatives.
"""

from __future__ import annotations

import torch

AP_DEFINITIONS = ("interpolated", "plain", "11point")
"""The average-precision definitions :func:`average_precision` computes."""


def average_precision(
    scores: torch.Tensor,
    positives: torch.Tensor,
    ignore: torch.Tensor | None = None,
    definition: str = "plain",
) -> torch.Tensor:
    """Per-class average precision ``[C]`` (a fraction in [0, 1], float64) of ``[N, C]``
    ``scores`` against the boolean ``positives``.

    Each column is ranked by descending score; tied scores form one threshold (as in
    scikit-learn), so the result does not depend on the order of the rows. At the k-th
    distinct threshold, ``TP_k``/``FP_k`` count the kept positives/negatives scored at or
    above it, ``P_k = TP_k / (TP_k + FP_k)`` and ``R_k = TP_k / N_pos``. With
    ``Env(r) = max {P_k : R_k >= r}`` (the monotone precision envelope; 0 when no threshold
    reaches recall r):

    - ``"plain"``: ``sum_k (R_k - R_{k-1}) P_k`` (non-interpolated; the mean of the
      precision at each positive's threshold; equals sklearn's ``average_precision_score``).
    - ``"interpolated"``: ``sum_k (R_k - R_{k-1}) Env(R_k)``, the area under the envelope
      (the VOC 2010+ devkit's all-point AP).
    - ``"11point"``: ``(1/11) sum_{t in 0, 0.1, ..., 1} Env(t)`` (the VOC2007 devkit; the
      recall levels are exactly k/10).

    A class with no kept positive has an undefined AP: NaN (leave it out of a mean with
    ``torch.nanmean``).

    Args:
        scores: ``[N, C]`` real scores (higher: more confident).
        positives: ``[N, C]`` boolean ground truth.
        ignore: ``[N, C]`` boolean; true entries count for neither side.
        definition: one of :data:`AP_DEFINITIONS`.
    """
    if definition not in AP_DEFINITIONS:
        raise ValueError(
            f"unknown AP definition {definition!r}; available: {', '.join(AP_DEFINITIONS)}"
        )
    kept = _kept(scores, positives, ignore)
    ranked, order = scores.T.sort(dim=1, descending=True)  # [C, N], rows are classes
    truth = positives.T.gather(1, order)
    kept = kept.T.gather(1, order)
    pos = (truth & kept).double()
    tp = pos.cumsum(1)
    fp = (~truth & kept).double().cumsum(1)
    n_pos = pos.sum(1)
    # A threshold ends at the last row of each run of tied scores.
    last = torch.ones_like(ranked, dtype=torch.bool)
    last[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
    called = tp + fp
    precision = torch.where(last & (called > 0), tp / called.clamp_min(1), 0.0)
    envelope = precision.flip(1).cummax(1).values.flip(1)
    if definition == "11point":
        # Env(t) is the envelope at the first row whose recall reaches t: 10 TP >= k N_pos.
        levels = torch.arange(11, device=tp.device, dtype=tp.dtype) * n_pos.unsqueeze(1)
        first = torch.searchsorted((10 * tp).contiguous(), levels)
        padded = torch.cat([envelope, envelope.new_zeros(envelope.shape[0], 1)], dim=1)
        ap = padded.gather(1, first).mean(1)
    else:
        if definition == "plain":
            # Each positive takes the precision at the end of its tie run.
            index = torch.arange(ranked.shape[1], device=ranked.device).expand_as(ranked)
            ends = torch.where(last, index, ranked.shape[1]).flip(1).cummin(1).values.flip(1)
            at_positive = precision.gather(1, ends)
        else:
            at_positive = envelope
        ap = (pos * at_positive).sum(1) / n_pos.clamp_min(1)
    return torch.where(n_pos > 0, ap, torch.nan)


def threshold_metrics(
    scores: torch.Tensor,
    positives: torch.Tensor,
    ignore: torch.Tensor | None = None,
    threshold: float = 0.5,
) -> dict[str, torch.Tensor]:
    """CP, CR, CF1, OP, OR, OF1 (fractions in [0, 1], 0-d float64) of the predictions
    ``scores >= threshold``, as in the multi-label literature (ML-GCN, LSHFM).

    Per class c over the kept entries: ``Nc`` correct positive predictions, ``Np``
    predictions (replaced by 1 when 0), ``Ng`` ground-truth positives.

    - ``cp = mean_c Nc/Np``; ``cr = mean_c Nc/Ng`` over the classes with ``Ng > 0`` (the
      others have no recall); ``cf1 = 2 cp cr / (cp + cr)``.
    - ``op = sum Nc / sum Np`` (with the replaced 1s, as the reference code);
      ``or = sum Nc / sum Ng``; ``of1 = 2 op or / (op + or)``.

    An F1 is 0 when its precision and recall are both 0 (NaN when either is NaN).
    """
    kept = _kept(scores, positives, ignore)
    predicted = (scores >= threshold) & kept
    truth = positives & kept
    n_correct = (predicted & truth).sum(0).double()
    n_predicted = predicted.sum(0).double().clamp_min(1)
    n_truth = truth.sum(0).double()
    cp = (n_correct / n_predicted).mean()
    cr = (n_correct / n_truth)[n_truth > 0].mean()
    op = n_correct.sum() / n_predicted.sum()
    overall_recall = n_correct.sum() / n_truth.sum()
    return {
        "cp": cp,
        "cr": cr,
        "cf1": _f1(cp, cr),
        "op": op,
        "or": overall_recall,
        "of1": _f1(op, overall_recall),
    }


def _kept(
    scores: torch.Tensor, positives: torch.Tensor, ignore: torch.Tensor | None
) -> torch.Tensor:
    """The boolean mask of entries that count, after checking the shapes and dtypes."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [samples, classes], found shape {tuple(scores.shape)}")
    masks = (
        {"positives": positives} if ignore is None else {"positives": positives, "ignore": ignore}
    )
    for name, mask in masks.items():
        if mask.shape != scores.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"{name} must be a boolean tensor of the scores' shape {tuple(scores.shape)}, "
                f"found {mask.dtype} {tuple(mask.shape)}"
            )
    return torch.ones_like(positives) if ignore is None else ~ignore


def _f1(precision: torch.Tensor, recall: torch.Tensor) -> torch.Tensor:
    """Harmonic mean of ``precision`` and ``recall`` (0 when both are 0)."""
    total = precision + recall
    return torch.where(total > 0, 2 * precision * recall / total, total)
