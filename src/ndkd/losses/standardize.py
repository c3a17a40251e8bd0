"""Logit standardization (Sun et al., "Logit Standardization in Knowledge Distillation",
CVPR 2024): a Z-score of each sample's logits before a KD-type loss."""

from __future__ import annotations

import torch

from ndkd.checks import check_matrix, check_non_negative, promote


def standardize_logits(
    logits: torch.Tensor, eps: float = 1e-7, unbiased: bool = True
) -> torch.Tensor:
    """The Z-score of each row, ``(z - mean(z)) / (std(z) + eps)`` over the C classes.

    This is the function ``Z`` of the paper's Algorithm 1 ("Z-score logit standardization
    pre-process") without its division by the base temperature ``tau``: the KD-type loss
    that follows applies ``tau`` as its temperature (``softmax(Z(z) / tau)``, loss times
    ``tau^2``), exactly as the authors' code does (``mdistiller/distillers/KD.py`` and
    ``DKD.py`` of sunshangquan/logit-standardization-KD: ``normalize`` then ``/ temperature``).

    The defaults follow that code: ``std`` is the unbiased standard deviation
    (``torch.std``, divisor ``C - 1``) and ``eps = 1e-7`` is added to it. Algorithm 1 writes the
    biased one (divisor ``C``; ``unbiased=False``, ``eps=0``); the two differ by the constant
    factor ``sqrt(C / (C - 1))``, i.e. a base temperature larger by that factor (0.5 % for
    C = 100). The result is invariant to a per-sample shift and positive scale of the logits
    (up to ``eps``). A row of equal logits maps to zeros (a uniform softmax) with a finite
    gradient: the variance is clamped at the smallest normal float before its square root,
    where ``torch.std``'s gradient would be NaN. With C = 2 every row with distinct logits maps
    to ``(+-1/sqrt(2), -+1/sqrt(2))`` (unbiased): only the order of the two logits is left.

    Float32 or better (bf16/fp16 are promoted); shape ``[B, C]`` in, ``[B, C]`` out.
    """
    check_matrix("logits", logits)
    check_non_negative("eps", eps)
    z = promote(logits)
    classes = z.shape[1]
    divisor = classes - 1 if unbiased else classes
    if divisor < 1:
        raise ValueError(
            f"standardize_logits needs at least {2 if unbiased else 1} classes, found {classes}"
        )
    centred = z - z.mean(dim=1, keepdim=True)
    variance = centred.square().sum(dim=1, keepdim=True) / divisor
    std = variance.clamp_min(torch.finfo(variance.dtype).tiny).sqrt()
    return centred / (std + eps)


def standardize_pair(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides standardized (:func:`standardize_logits`, the authors' defaults) for a
    KD-type loss: the student's with its gradient, the teacher's as constants."""
    return standardize_logits(student_logits), standardize_logits(teacher_logits.detach())
