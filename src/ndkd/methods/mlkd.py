"""MLKD (Jin, Wang, Lin, CVPR 2023): multi-level logit distillation on one view."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ndkd.checks import check_flag
from ndkd.losses.mlkd import LEVELS, MASK_MODES, check_temperatures, confidence_masks, mlkd_loss
from ndkd.losses.standardize import standardize_pair
from ndkd.methods.base import BuildContext, StepOutputs, Term, check_same_classes, need_teacher
from ndkd.methods.registry import register

MASKS = (*MASK_MODES, "none")


@register("mlkd")
class MLKDTerm(Term):
    """MLKD on the step's view: instance (KD), batch (``B x B`` Gram) and class (``C x C``)
    alignment of the predictions at each of ``temperatures``, summed (see
    :mod:`ndkd.losses.mlkd`).

    Params (defaults: the authors' CIFAR-100 code): ``temperatures`` (``[2, 3, 4, 5, 6]``;
    their ImageNet recipe uses ``[1, 2, 3, 5, 6]``); ``mask``: how the teacher-confidence
    masks (:func:`~ndkd.losses.mlkd.confidence_masks`, computed from the teacher's raw
    logits at ``T = 1``) enter: ``"scale"`` as in the authors' code (each level times the
    fraction of samples / classes kept), ``"select"`` element-wise, ``"none"`` unmasked;
    ``mask_percentile`` (50: keep the samples and classes at or below the median
    confidence); ``levels``: which of ``instance``, ``batch``, ``class`` to sum (the
    authors' strongly augmented view: ``[instance]`` with ``mask: none``).

    ``standardize``: Z-score both sides' logits per sample (logit standardization, Sun et
    al., CVPR 2024, :func:`ndkd.losses.standardize.standardize_pair`) before the instance
    level only, as their MLKD code does (``kd_loss(..., logit_stand=...)``; the batch and
    class levels and the masks keep the raw logits). The transform stays outside the loss:
    :func:`~ndkd.losses.mlkd.mlkd_loss` takes whatever logits it is given.

    The weight is the authors' ``KD_WEIGHT`` (0.9 on CIFAR-100 next to ``ce`` 0.1; 0.5 and
    0.5 on ImageNet).

    Their two-view training (``data.strong_view: mlkd``) is this term on each view, routed
    by name: ``mlkd`` on the weak view, ``mlkd@strong`` with ``levels: [instance]`` and
    ``mask: none`` on the strong one (``configs/cifar100/mlkd_two_view/``).
    """

    requires_teacher = True

    def __init__(
        self,
        context: BuildContext,
        temperatures: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0),
        mask: str = "scale",
        mask_percentile: float = 50.0,
        levels: Sequence[str] = LEVELS,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        check_temperatures("mlkd: temperatures", temperatures)
        if mask not in MASKS:
            raise ValueError(f"mlkd: mask must be one of {', '.join(MASKS)}, found {mask!r}")
        if (
            isinstance(mask_percentile, bool)
            or not isinstance(mask_percentile, (int, float))
            or not 0 <= mask_percentile <= 100
        ):
            raise ValueError(
                f"mlkd: mask_percentile must be in [0, 100], found {mask_percentile!r}"
            )
        if isinstance(levels, str) or not levels or not set(levels) <= set(LEVELS):
            raise ValueError(
                f"mlkd: levels must be a non-empty list of {', '.join(LEVELS)}, found {levels!r}"
            )
        if len(set(levels)) != len(levels):
            raise ValueError(f"mlkd: levels must not repeat a level, found {list(levels)!r}")
        check_flag("mlkd: standardize", standardize)
        check_same_classes("mlkd", context)
        self.temperatures = tuple(float(t) for t in temperatures)
        self.mask = mask
        self.mask_percentile = float(mask_percentile)
        self.levels = tuple(levels)
        self.standardize = standardize

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("mlkd", outputs)
        student_logits, teacher_logits = outputs.student.logits, teacher.logits
        sample_mask = class_mask = None
        if self.mask != "none":
            sample_mask, class_mask = confidence_masks(teacher_logits, self.mask_percentile)
        mode = "select" if self.mask == "select" else "scale"
        masks = (self.temperatures, sample_mask, class_mask, mode)
        if not self.standardize:
            return mlkd_loss(student_logits, teacher_logits, *masks, levels=self.levels)
        relations = [level for level in self.levels if level != "instance"]
        total = student_logits.new_zeros((), dtype=torch.float32)
        if "instance" in self.levels:
            standardized = standardize_pair(student_logits, teacher_logits)
            total = total + mlkd_loss(*standardized, *masks, levels=["instance"])
        if relations:
            total = total + mlkd_loss(student_logits, teacher_logits, *masks, levels=relations)
        return total
