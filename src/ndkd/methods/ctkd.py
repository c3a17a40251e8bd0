"""The CTKD term: KD or DKD at a learned, adversarial, curriculum temperature (Li et al.,
"Curriculum Temperature for Knowledge Distillation", AAAI 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.checks import check_count, check_finite, check_non_negative, check_positive
from ndkd.losses.ctkd import bounded_temperature, curriculum_lambda, reverse_gradient
from ndkd.losses.dkd import dkd_loss
from ndkd.losses.kd import kd_loss
from ndkd.methods.base import (
    BuildContext,
    StepOutputs,
    Term,
    check_same_classes,
    need_teacher,
)
from ndkd.methods.registry import register

LOSSES = ("kd", "dkd")
MODES = ("global", "instance")


class GlobalTemperature(nn.Module):
    """Global-T: one learnable raw value for the whole training set (the authors'
    ``Global_T``, a ``[1]`` parameter initialised to 1). ``forward`` returns it, ``[1]``."""

    def __init__(self, init_logit: float = 1.0) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.full((1,), float(init_logit)))

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return self.raw


class InstanceTemperature(nn.Module):
    """Instance-T: a 2-layer MLP on the concatenated teacher and student class probabilities
    ``[B, 2C]`` (the paper's Fig. 2b; the authors describe it as two 1x1 convolutions, i.e.
    two linear layers) that predicts one raw value per sample, ``[B, 1]``.

    Its inputs are detached: the student learns from the distillation loss, not through the
    temperature predictor (whose gradient is reversed). The last layer starts at weight 0 and
    bias ``init_logit``, so every sample starts at Global-T's initial temperature; the hidden
    width is ``hidden_dim`` (the authors' instance-wise code is not in their repository).
    """

    def __init__(self, num_classes: int, hidden_dim: int = 256, init_logit: float = 1.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * num_classes, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1)
        )
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.constant_(self.mlp[2].bias, float(init_logit))

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        weight = self.mlp[0].weight
        probs = torch.cat(
            (
                F.softmax(teacher_logits.detach().float(), dim=1),
                F.softmax(student_logits.detach().float(), dim=1),
            ),
            dim=1,
        )
        return self.mlp(probs.to(weight.dtype))


@register("ctkd")
class CTKDTerm(Term):
    """CTKD: ``loss`` (``kd``, or ``dkd`` with ``alpha``/``beta``) at a learned temperature
    ``τ = t_start + t_range * sigmoid(raw)``, raw from a :class:`GlobalTemperature` (``mode:
    global``, one τ) or an :class:`InstanceTemperature` (``mode: instance``, one τ per
    sample), trained by the student's optimizer through a gradient reversal layer of strength
    ``λ(n)``: the temperature ascends the loss the student descends. ``λ`` follows the
    paper's cosine curriculum (Eq. 11) from ``lambda_min`` to ``lambda_max`` over the first
    ``curriculum_epochs`` epochs, with ``n = epoch + curriculum_from`` (the engine's epochs
    count from 0; the authors' loop counts from 1, hence the default 1).

    Defaults are the authors' CIFAR-100 script (``scripts/run_cifar_distill.sh``: global T,
    ``--t_start 1 --t_end 20``, λ 0 → 1 over ``--decay_loops 10``; DKD ``--dkd_alpha 1
    --dkd_beta 2``); the initial τ is ``1 + 20 sigmoid(1)`` ≈ 15.62. The loss is the batch
    mean of ``τ_i^2 KL`` (or of DKD's parts times ``τ_i^2``), computed in log-space in fp32,
    so extreme logits, bf16 outputs and a τ pushed to either bound stay finite.
    ``last_temperature`` and ``last_lambda`` hold the values of the latest call. The term
    reads class labels (refused for multi-label targets) only with ``loss: dkd``.
    """

    requires_teacher = True

    def __init__(
        self,
        context: BuildContext,
        loss: str = "kd",
        mode: str = "global",
        alpha: float = 1.0,
        beta: float = 2.0,
        t_start: float = 1.0,
        t_range: float = 20.0,
        init_logit: float = 1.0,
        lambda_min: float = 0.0,
        lambda_max: float = 1.0,
        curriculum_epochs: int = 10,
        curriculum_from: int = 1,
        hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"ctkd: loss must be one of {LOSSES}, found {loss!r}")
        if mode not in MODES:
            raise ValueError(f"ctkd: mode must be one of {MODES}, found {mode!r}")
        check_non_negative("ctkd: alpha", alpha)
        check_non_negative("ctkd: beta", beta)
        check_positive("ctkd: t_start", t_start)
        check_positive("ctkd: t_range", t_range)
        check_finite("ctkd: init_logit", init_logit)
        check_non_negative("ctkd: lambda_min", lambda_min)
        check_non_negative("ctkd: lambda_max", lambda_max)
        check_count("ctkd: curriculum_epochs", curriculum_epochs, minimum=0)
        if isinstance(curriculum_from, bool) or curriculum_from not in (0, 1):
            raise ValueError(f"ctkd: curriculum_from must be 0 or 1, found {curriculum_from!r}")
        check_count("ctkd: hidden_dim", hidden_dim)
        check_same_classes("ctkd", context)
        self.loss, self.mode = loss, mode
        self.alpha, self.beta = alpha, beta
        self.t_start, self.t_range = t_start, t_range
        self.lambda_min, self.lambda_max = lambda_min, lambda_max
        self.curriculum_epochs, self.curriculum_from = curriculum_epochs, curriculum_from
        self.reads_class_labels = loss == "dkd"
        self.temperature: nn.Module
        if mode == "global":
            self.temperature = GlobalTemperature(init_logit)
        else:
            num_classes = context.student_probe.logits.shape[1]
            self.temperature = InstanceTemperature(num_classes, hidden_dim, init_logit)
        self.last_temperature: torch.Tensor | None = None
        self.last_lambda: float | None = None

    def lambda_at(self, epoch: int) -> float:
        """The reversal strength in the engine's epoch ``epoch`` (counted from 0)."""
        return curriculum_lambda(
            epoch + self.curriculum_from,
            self.lambda_min,
            self.lambda_max,
            self.curriculum_epochs,
        )

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("ctkd", outputs)
        student_logits, teacher_logits = outputs.student.logits, teacher.logits
        strength = self.lambda_at(outputs.epoch)
        raw = self.temperature(student_logits, teacher_logits)
        tau = bounded_temperature(reverse_gradient(raw, strength), self.t_start, self.t_range)
        self.last_temperature, self.last_lambda = tau.detach(), strength
        if self.loss == "kd":
            return kd_loss(student_logits, teacher_logits, tau)
        return dkd_loss(student_logits, teacher_logits, outputs.labels, self.alpha, self.beta, tau)
