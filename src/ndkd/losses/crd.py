"""Contrastive representation distillation, CRD (Tian et al., ICLR 2020): the NCE pieces."""

from __future__ import annotations

import math

import torch

from ndkd.checks import check_count, check_matrix, promote

NCE_EPS = 1e-7


def crd_normalizer(logits: torch.Tensor, dataset_size: int) -> torch.Tensor:
    """Monte-Carlo estimate of the partition constant ``Z = N * mean(exp(logits))``.

    ``logits`` ``[B, K+1]`` are the scores ``v . m / tau`` of a batch against its sampled
    memory rows; the authors' code sets ``Z`` once, from the first batch, and keeps it.
    """
    check_matrix("logits", logits)
    return promote(logits.detach()).exp().mean() * dataset_size


def crd_nce_loss(
    logits: torch.Tensor, normalizer: torch.Tensor | float, dataset_size: int
) -> torch.Tensor:
    """NCE loss of CRD (Eq. 18 as the authors' ``ContrastLoss`` computes it).

    ``logits`` ``[B, K+1]``: column 0 scores each anchor against its positive (the same
    sample on the other side), columns 1..K against K negatives drawn uniformly from the
    ``N = dataset_size`` samples. With ``P = exp(logits) / Z`` and the noise mass
    ``c = K / N``::

        loss = -1/B sum_i [ log(P_i0 / (P_i0 + c + eps))
                            + sum_{k>=1} log(c / (P_ik + c + eps)) ]

    ``eps = 1e-7`` as there; computed in log space (``log P = logits - log Z``).
    """
    check_matrix("logits", logits)
    if logits.shape[1] < 2:
        raise ValueError(
            f"logits must be [batch, 1 + negatives] with at least one negative, "
            f"found shape {tuple(logits.shape)}"
        )
    check_count("dataset_size", dataset_size)
    x = promote(logits)
    noise = (x.shape[1] - 1) / dataset_size
    log_p = x - torch.log(torch.as_tensor(normalizer, dtype=x.dtype, device=x.device))
    log_denominator = torch.logaddexp(log_p, log_p.new_tensor(math.log(noise + NCE_EPS)))
    positive = log_p[:, 0] - log_denominator[:, 0]
    negative = math.log(noise) - log_denominator[:, 1:]
    return -(positive.sum() + negative.sum()) / max(x.shape[0], 1)
