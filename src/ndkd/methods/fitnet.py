"""The FitNet term: a hint from one teacher stage for one student stage (Romero et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.losses.fitnet import hint_loss
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher, need_teacher_probe
from ndkd.methods.registry import register


class HintRegressor(nn.Module):
    """FitNets' regressor ``r``: student map ``[Cs, Hs, Ws]`` -> teacher map ``[Ct, Ht, Wt]``.

    A convolution chosen by the spatial sizes as the reference toolboxes do (a 3x3 stride-2
    conv when the student map is twice as large, a 4x4 stride-2 transposed conv when half as
    large, else a valid conv of kernel ``1 + Hs - Ht`` by ``1 + Ws - Wt``, 1x1 for equal
    sizes), then BN and ReLU (the hint is a post-ReLU map).
    """

    def __init__(self, student_shape: torch.Size, teacher_shape: torch.Size) -> None:
        super().__init__()
        s_channels, s_height, s_width = student_shape
        t_channels, t_height, t_width = teacher_shape
        self.conv: nn.Module
        if (s_height, s_width) == (2 * t_height, 2 * t_width):
            self.conv = nn.Conv2d(s_channels, t_channels, 3, stride=2, padding=1)
        elif (2 * s_height, 2 * s_width) == (t_height, t_width):
            self.conv = nn.ConvTranspose2d(s_channels, t_channels, 4, stride=2, padding=1)
        elif s_height >= t_height and s_width >= t_width:
            kernel = (1 + s_height - t_height, 1 + s_width - t_width)
            self.conv = nn.Conv2d(s_channels, t_channels, kernel)
        else:
            raise ValueError(
                f"fitnet: cannot regress a {s_height}x{s_width} student map onto a "
                f"{t_height}x{t_width} teacher map (expected the student map twice, half, or "
                "at least as large); choose another hint_stage"
            )
        self.bn = nn.BatchNorm2d(t_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


@register("fitnet")
class FitNetTerm(Term):
    """FitNet: ``hint_loss(r(student.stages[k]), teacher.stages[k])`` for ``k = hint_stage``.

    ``stages[0]`` is the stem output, so the default 2 is the second stage (the middle one of
    the CIFAR ResNets/WRNs), the hint layer of the reference toolboxes. The regressor
    (:class:`HintRegressor`) is sized from the probed maps and trained with the student.
    Single-stage training: the hint loss is added to the other terms from the first epoch
    (the paper's and RepDistiller's separate hint pre-training stage is not done).
    """

    requires_teacher = True

    def __init__(self, context: BuildContext, hint_stage: int = 2) -> None:
        super().__init__()
        teacher = need_teacher_probe("fitnet", context)
        count = min(len(context.student_probe.stages), len(teacher.stages))
        if count == 0:
            raise ValueError("fitnet: the student and the teacher must expose stage maps")
        if not 0 <= hint_stage < count:
            raise ValueError(
                f"fitnet: hint_stage must be in [0, {count - 1}] (the student has "
                f"{len(context.student_probe.stages)} stage maps, the teacher "
                f"{len(teacher.stages)}), found {hint_stage}"
            )
        self.hint_stage = hint_stage
        self.regressor = HintRegressor(
            context.student_probe.stages[hint_stage].shape[1:],
            teacher.stages[hint_stage].shape[1:],
        )

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("fitnet", outputs)
        student_hint = self.regressor(outputs.student.stages[self.hint_stage])
        return hint_loss(student_hint, teacher.stages[self.hint_stage])
