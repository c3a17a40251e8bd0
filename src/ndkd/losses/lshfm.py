"""Feature mimicking with an LSH loss, LSHFM (Wang, Ge & Wu, TPAMI 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ndkd.checks import check_matrix, check_same_shape, promote
from ndkd.losses.norm import l2_feature_loss
from ndkd.losses.reduction import reduce_per_sample


def lsh_codes(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Hash bits ``1[w_n . f + b_n > 0]`` ``[B, N]`` (as floats) of features ``[B, D]``
    under N hyperplanes ``weight`` ``[N, D]``, ``bias`` ``[N]``: the LSH targets."""
    return (_projections(features.detach(), weight, bias) > 0).to(features.dtype)


def lshfm_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    with_l2: bool = True,
    sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """LSHFM loss: feature L2 plus the LSH loss, per sample, then a (weighted) batch mean.

    Per sample ``i``, with ``h = W t_i + b`` the teacher's projections on the N hyperplanes
    (``weight`` ``[N, D]``, ``bias`` ``[N]``, constants) and ``z = W s_i + b`` the
    student's::

        l_i = 1/D ||s_i - t_i||^2  +  1/N sum_n BCE(sigmoid(z_n), 1[h_n > 0])

    The L2 part (the mean squared error of the public code, dropped with
    ``with_l2=False``) mimics the feature; the LSH part only asks each student projection to
    fall on the teacher's side of each hyperplane, which constrains the direction more than
    the magnitude. The loss is ``sum_i w_i l_i / sum_i w_i`` with ``sample_weights`` ``[B]``
    (e.g. 1 where the teacher classifies the sample correctly, as the public code's default
    variant), else the plain batch mean; 0 when every weight is 0. Student and teacher dims
    must match (project the student first); the teacher features are constants.
    """
    check_same_shape("student_emb", student_emb, "teacher_emb", teacher_emb)
    s = promote(student_emb)
    t = promote(teacher_emb.detach()).to(s.dtype)
    with torch.autocast(s.device.type, enabled=False):
        targets = lsh_codes(t, weight, bias)
        bce = F.binary_cross_entropy_with_logits(
            _projections(s, weight, bias), targets, reduction="none"
        )
        per_sample = bce.mean(dim=1)
        if with_l2:
            per_sample = per_sample + l2_feature_loss(s, t, reduction="none") / s.shape[1]
    if sample_weights is None:
        return reduce_per_sample(per_sample, None, None, "batch")
    if sample_weights.shape != per_sample.shape:
        raise ValueError(
            f"sample_weights must have shape {tuple(per_sample.shape)}, "
            f"found {tuple(sample_weights.shape)}"
        )
    w = sample_weights.to(per_sample)
    return (w * per_sample).sum() / w.sum().clamp_min(1e-12)


def hash_offsets(
    features: torch.Tensor, weight: torch.Tensor, statistic: str, chunk_elements: int = 2**26
) -> torch.Tensor:
    """Hyperplane biases ``b_n = -stat_i(w_n . f_i)`` ``[N]`` that centre each hash on the
    data: minus the ``"median"`` (the lower one for an even count, as ``torch.median``; the
    authors' default) or the ``"mean"`` projection of the features ``[M, D]`` on each of the
    N hyperplanes ``weight`` ``[N, D]``, so each bit splits the samples about evenly.
    Computed in float64, ``chunk_elements`` projections at a time (bounded memory)."""
    check_matrix("features", features)
    check_matrix("weight", weight)
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', found {statistic!r}")
    if features.shape[0] == 0 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"expected features [M >= 1, {weight.shape[1]}], found {tuple(features.shape)}"
        )
    x = features.detach().double()
    if statistic == "mean":
        return -(weight.double() @ x.mean(dim=0)).to(weight.dtype)
    step = max(1, chunk_elements // x.shape[0])
    parts = [
        (x @ weight[n : n + step].double().T).median(dim=0).values
        for n in range(0, weight.shape[0], step)
    ]
    return -torch.cat(parts).to(weight.dtype)


def _projections(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``features @ weight.T + bias`` in the features' (promoted) precision."""
    check_matrix("features", features)
    check_matrix("weight", weight)
    if weight.shape[1] != features.shape[1] or bias.shape != (weight.shape[0],):
        raise ValueError(
            f"hyperplanes must be weight [N, {features.shape[1]}] and bias [N], found "
            f"{tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    x = promote(features)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x, weight.to(x), bias.to(x))
