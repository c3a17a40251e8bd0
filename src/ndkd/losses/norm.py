"""Feature-norm baselines of the paper (Sec. 3.2): L2 feature distance and SIFN."""

from __future__ import annotations

import torch

from ndkd.checks import check_labels, check_matrix, check_positive, check_same_shape, promote
from ndkd.losses.reduction import Reduction, reduce_per_sample


def l2_feature_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    labels: torch.Tensor | None = None,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """L2 feature loss, Eq. 3: ``l_i = ||s_i - t_i||_2^2`` (squared distance, summed over D).

    The teacher features are constants. ``reduction="class"`` (Eq. 3 as written) needs
    ``labels``; ``"batch"`` is the plain mean over the batch.
    """
    check_matrix("student_emb", student_emb)
    check_same_shape("student_emb", student_emb, "teacher_emb", teacher_emb)
    s = promote(student_emb)
    t = promote(teacher_emb.detach()).to(s.dtype)
    per_sample = (s - t).pow(2).sum(dim=1)
    if labels is not None:
        check_labels(labels, per_sample.shape[0], num_classes=None)
        labels = labels.to(per_sample.device).long()
    return reduce_per_sample(per_sample, labels, None, reduction)


def sifn_loss(
    student_emb: torch.Tensor,
    previous_emb: torch.Tensor | None = None,
    step: float = 1.0,
    reduction: Reduction = "batch",
) -> torch.Tensor:
    """Stepwise increasing feature norm (SIFN), Eq. 4, after AFN (Xu et al., ICCV 2019).

    ``l_i = (||f_prev(x_i)|| + r - ||f_cur(x_i)||)^2``: the current feature norm is pulled
    ``r`` (``step``) above the norm the earlier student produced for the same input, so the
    norm grows by about ``r`` per refresh of the earlier model. ``previous_emb`` holds the
    features of the earlier checkpoint (:class:`ndkd.snapshot.ModelSnapshot` keeps one);
    ``None`` uses the current features, detached, i.e. the previous iteration's parameters,
    as AFN's reference implementation does. The earlier features are constants. Eq. 4
    averages over samples: ``reduction`` is ``"batch"`` or ``"none"``.
    """
    check_positive("step", step)
    check_matrix("student_emb", student_emb)
    s = promote(student_emb)
    if previous_emb is None:
        previous = s.detach()
    else:
        check_same_shape("student_emb", student_emb, "previous_emb", previous_emb)
        previous = promote(previous_emb.detach()).to(s.dtype)
    target = torch.linalg.vector_norm(previous, dim=1) + step
    per_sample = (target - torch.linalg.vector_norm(s, dim=1)).pow(2)
    return reduce_per_sample(per_sample, None, None, reduction)
