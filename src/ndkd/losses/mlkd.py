"""Multi-level logit distillation, MLKD (Jin, Wang, Lin, "Multi-Level Logit Distillation",
CVPR 2023, Sec. 3), for one batch of one view.

The paper's method section ("prediction augmentation", then "multi-level alignment" at the
instance, batch and class levels, summed into one objective) is cited below by those names;
the constants (temperatures, normalisers, ``T^2``) are those of the authors' code
(``mdistiller/distillers/KD_ours.py`` in ``Jin-Ying/Multi-Level-Logit-Distillation``).

Prediction augmentation: every level is evaluated on the predictions
``P_k = softmax(Z / T_k)`` of each temperature ``T_k`` of a list, summed over the list
(the authors' code: ``{2, 3, 4, 5, 6}`` on CIFAR-100, ``{1, 2, 3, 5, 6}`` on ImageNet).
Multi-level alignment, for a batch of ``B`` samples and ``C`` classes:

- instance level: ``L_ins = sum_k 1/B sum_i KL(p^t_{k,i} || p^s_{k,i}) * T_k^2``, Hinton's
  KD at each temperature (batch mean, scaled by ``T_k^2``);
- batch level: the ``B x B`` Gram matrix of the predictions, ``G_k = P_k P_k^T``
  (``G_k[i, j]`` is the inner product of the predictions of samples ``i`` and ``j``),
  ``L_batch = sum_k 1/B ||G^t_k - G^s_k||_F^2``; no ``T^2`` factor;
- class level: the ``C x C`` matrix ``M_k = P_k^T P_k`` (``M_k[c, d]`` is the inner
  product of the columns of classes ``c`` and ``d`` over the batch),
  ``L_class = sum_k 1/C ||M^t_k - M^s_k||_F^2``; no ``T^2`` factor.

``L_MLKD = L_ins + L_batch + L_class``, each level with weight 1 (the authors' code
multiplies all three by one ``KD_WEIGHT``: the term weight of a config).

Confidence masking (the authors' code, not in the paper's equations): from the teacher's
predictions at ``T = 1`` of the weakly augmented view, a sample is kept when its confidence
``max_c p_ic`` is at most the 50th percentile of the batch's confidences, and a class is
kept when its summed prediction ``sum_i p_ic`` is at most the 50th percentile of the C
sums (:func:`confidence_masks`). Their code multiplies batch-mean losses by the masks and
averages (``(loss * mask).mean()`` with ``loss`` already a scalar), so a mask only scales a
level by the fraction of samples (instance and batch levels) or classes (class level) it
keeps: ``mode="scale"`` reproduces that. ``mode="select"`` applies the masks element-wise
instead (kept samples for ``L_ins``; Gram entries whose two samples are kept for
``L_batch``; entries whose two classes are kept for ``L_class``; normalisers unchanged).

Logit transforms (e.g. logit standardization) are the caller's: pass transformed logits
here and compute the masks from whichever logits the recipe names. The teacher is a
constant; the math runs in float32 (float64 stays float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ndkd.checks import check_logit_pair, check_matrix, check_positive, promote

MaskMode = Literal["scale", "select"]
MASK_MODES: tuple[str, ...] = ("scale", "select")
LEVELS: tuple[str, ...] = ("instance", "batch", "class")


def confidence_masks(
    teacher_logits: torch.Tensor, percentile: float = 50.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' confidence masks from teacher logits ``[B, C]`` (softmax at ``T = 1``).

    Returns ``(sample_mask [B], class_mask [C])``, booleans: sample ``i`` is kept when
    ``max_c p_ic <= q``, ``q`` the ``percentile``-th percentile (linear interpolation, as
    NumPy's default) of the B confidences; class ``c`` is kept when ``sum_i p_ic`` is at most
    the same percentile of the C class sums. Keeping ``<=`` the percentile keeps at least one
    sample and one class. Runs on the tensors' device (no NumPy round-trip).
    """
    check_matrix("teacher_logits", teacher_logits)
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], found {percentile!r}")
    batch, classes = teacher_logits.shape
    if batch == 0:
        device = teacher_logits.device
        return (
            torch.zeros(0, dtype=torch.bool, device=device),
            torch.ones(classes, dtype=torch.bool, device=device),
        )
    with torch.no_grad():
        p = F.softmax(promote(teacher_logits.detach()), dim=1)
        confidence = p.amax(dim=1)
        class_sum = p.sum(dim=0)
        q = percentile / 100.0
        sample_mask = confidence <= torch.quantile(confidence, q)
        class_mask = class_sum <= torch.quantile(class_sum, q)
    return sample_mask, class_mask


def instance_alignment_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperatures: Sequence[float],
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_ins`` (instance-level alignment):
    ``sum_k 1/B sum_i w_i KL(p^t_{k,i} || p^s_{k,i}) * T_k^2``.

    ``sample_weights`` ``w`` ``[B]`` (a 0/1 mask, or ``None`` for all ones) weight each
    sample; the normaliser stays ``B``. An empty batch gives 0.
    """
    s, t, temps = _checked(student_logits, teacher_logits, temperatures)
    w = None if sample_weights is None else _weights(sample_weights, s.shape[0], "sample", s)
    return _instance(s / temps, t / temps, temps, w)


def batch_alignment_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperatures: Sequence[float],
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_batch`` (batch-level alignment):
    ``sum_k 1/B sum_{i,j} w_i w_j (G^t_k - G^s_k)_{ij}^2``, ``G_k = P_k P_k^T`` ``[B, B]``;
    ``w`` ``[B]`` as in :func:`instance_alignment_loss`."""
    s, t, temps = _checked(student_logits, teacher_logits, temperatures)
    w = None if sample_weights is None else _weights(sample_weights, s.shape[0], "sample", s)
    return _batch(F.softmax(s / temps, dim=2), F.softmax(t / temps, dim=2), w)


def class_alignment_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperatures: Sequence[float],
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_class`` (class-level alignment):
    ``sum_k 1/C sum_{c,d} v_c v_d (M^t_k - M^s_k)_{cd}^2``, ``M_k = P_k^T P_k`` ``[C, C]``;
    ``class_weights`` ``v`` ``[C]`` (a 0/1 mask, or ``None`` for all ones)."""
    s, t, temps = _checked(student_logits, teacher_logits, temperatures)
    v = None if class_weights is None else _weights(class_weights, s.shape[1], "class", s)
    return _class(F.softmax(s / temps, dim=2), F.softmax(t / temps, dim=2), v)


def mlkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
    sample_mask: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
    mode: MaskMode = "scale",
    levels: Sequence[str] = LEVELS,
) -> torch.Tensor:
    """``L_MLKD = L_ins + L_batch + L_class`` for one view, optionally masked.

    ``sample_mask`` ``[B]`` masks the instance and batch levels, ``class_mask`` ``[C]`` the
    class level (``None``: no mask), e.g. from :func:`confidence_masks`. ``mode="scale"``
    (the authors' code): each masked level is multiplied by the fraction of samples or
    classes its mask keeps; ``mode="select"``: the masks weight samples / pairs
    element-wise. ``levels`` picks a subset of ``("instance", "batch", "class")`` (the
    authors' strong view uses the instance level only). Returns a float32 (or float64)
    scalar; gradients reach the student logits only.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mode must be one of {', '.join(MASK_MODES)}, found {mode!r}")
    _check_levels(levels)
    s, t, temps = _checked(student_logits, teacher_logits, temperatures)
    if sample_mask is not None:
        sample_mask = _weights(sample_mask, s.shape[0], "sample", s)
    if class_mask is not None:
        class_mask = _weights(class_mask, s.shape[1], "class", s)
    select = mode == "select"
    s, t = s / temps, t / temps  # [K, B, C]: the logits at each temperature
    total = s.new_zeros(())
    if "instance" in levels:
        loss = _instance(s, t, temps, sample_mask if select else None)
        total = total + _scaled(loss, sample_mask, select)
    if "batch" in levels or "class" in levels:
        p_s, p_t = F.softmax(s, dim=2), F.softmax(t, dim=2)
        if "batch" in levels:
            loss = _batch(p_s, p_t, sample_mask if select else None)
            total = total + _scaled(loss, sample_mask, select)
        if "class" in levels:
            loss = _class(p_s, p_t, class_mask if select else None)
            total = total + _scaled(loss, class_mask, select)
    return total


def _instance(
    s: torch.Tensor, t: torch.Tensor, temps: torch.Tensor, w: torch.Tensor | None
) -> torch.Tensor:
    """``[K, B, C]`` logits over ``T_k`` -> ``sum_k T_k^2 / B sum_i w_i KL_ki``."""
    log_p_s, log_p_t = F.log_softmax(s, dim=2), F.log_softmax(t, dim=2)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=2)  # [K, B]
    if w is not None:
        kl = kl * w
    return (kl * temps.squeeze(2).square()).sum() / max(s.shape[1], 1)


def _batch(p_s: torch.Tensor, p_t: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``[K, B, C]`` predictions -> ``sum_k 1/B sum_ij w_i w_j (G^t - G^s)_kij^2``."""
    squared = (p_t @ p_t.mT - p_s @ p_s.mT).square()  # [K, B, B]
    if w is not None:
        squared = squared * torch.outer(w, w)
    return squared.sum() / max(p_s.shape[1], 1)


def _class(p_s: torch.Tensor, p_t: torch.Tensor, v: torch.Tensor | None) -> torch.Tensor:
    """``[K, B, C]`` predictions -> ``sum_k 1/C sum_cd v_c v_d (M^t - M^s)_kcd^2``."""
    squared = (p_t.mT @ p_t - p_s.mT @ p_s).square()  # [K, C, C]
    if v is not None:
        squared = squared * torch.outer(v, v)
    return squared.sum() / max(p_s.shape[2], 1)


def check_temperatures(name: str, temperatures: Sequence[float]) -> None:
    """Require a non-empty list of positive, finite temperatures."""
    if isinstance(temperatures, (str, bytes)) or not isinstance(temperatures, Sequence):
        raise ValueError(f"{name} must be a list of temperatures, found {temperatures!r}")
    if len(temperatures) == 0:
        raise ValueError(f"{name} must hold at least one temperature")
    for temperature in temperatures:
        check_positive(name, temperature)


def _check_levels(levels: Sequence[str]) -> None:
    if isinstance(levels, str) or not levels or not set(levels) <= set(LEVELS):
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, found {levels!r}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels must not repeat a level, found {levels!r}")


def _checked(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperatures: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The promoted logits ``[B, C]`` and the temperatures ``T_k`` ``[K, 1, 1]`` (filled on
    the logits' device: no host-to-device copy, no synchronization)."""
    check_logit_pair(student_logits, teacher_logits, 1.0)
    check_temperatures("temperatures", temperatures)
    s = promote(student_logits)
    t = promote(teacher_logits.detach()).to(s.dtype)
    temps = torch.stack([s.new_full((), float(temperature)) for temperature in temperatures])
    return s, t, temps.view(-1, 1, 1)


def _weights(mask: torch.Tensor, size: int, what: str, like: torch.Tensor) -> torch.Tensor:
    if mask.dim() != 1 or mask.shape[0] != size:
        raise ValueError(f"the {what} mask must have shape [{size}], found {tuple(mask.shape)}")
    return mask.detach().to(device=like.device, dtype=like.dtype)


def _scaled(loss: torch.Tensor, mask: torch.Tensor | None, select: bool) -> torch.Tensor:
    if mask is None or select:
        return loss
    return loss * (mask.sum() / max(mask.shape[0], 1))
