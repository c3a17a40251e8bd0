"""The ReviewKD term: knowledge review with attention-based fusion (Chen et al., CVPR 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.checks import check_count
from ndkd.losses.reviewkd import hcl_loss
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher, need_teacher_probe
from ndkd.methods.registry import register
from ndkd.models.output import ModelOutput

MAX_MID_CHANNELS = 512  # the public code's cap on the fusion width


def student_levels(output: ModelOutput) -> list[torch.Tensor]:
    """The student maps ReviewKD reviews: each stage output after the stem (post-ReLU), then
    the embedding as a ``[B, D, 1, 1]`` map; shallowest first."""
    return [*output.stages[1:], output.embedding[:, :, None, None]]


def teacher_levels(output: ModelOutput) -> list[torch.Tensor]:
    """The teacher maps they are matched to: the pre-ReLU stage outputs after the stem, then
    the embedding as a ``[B, D, 1, 1]`` map; shallowest first."""
    return [*output.preact_stages[1:], output.embedding[:, :, None, None]]


class AttentionFusion(nn.Module):
    """ABF: turns one student map into the teacher's width and size, fusing in the map
    reviewed from the deeper level.

    ``conv1`` (1x1 conv + BN) maps the student map to ``mid_channels``; when ``fuse``, the
    deeper level's fused map is resized (nearest) to this map's size and the two are mixed
    with per-position weights from ``att_conv`` (1x1 conv on their concatenation, sigmoid, one
    weight per input). The fused map is resized (nearest) to the teacher's size, then
    ``conv2`` (3x3 conv + BN) gives the output compared with the teacher. Parameter names
    follow the public code.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, deeper: torch.Tensor | None, out_size: torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(output at out_size with out_channels, fused map for the next level)``."""
        x = self.conv1(x)
        if self.att_conv is not None:
            if deeper is None:
                raise ValueError("AttentionFusion: a fusing level needs the deeper level's map")
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            weights = self.att_conv(torch.cat([x, deeper], dim=1))
            x = x * weights[:, :1] + deeper * weights[:, 1:]
        if x.shape[-2:] != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


@register("reviewkd")
class ReviewKDTerm(Term):
    """ReviewKD: HCL between the ABF-fused student levels and the teacher levels.

    Level ``i`` pairs the student's ``i``-th map of :func:`student_levels` with the teacher's
    of :func:`teacher_levels` (stages after the stem, then the pooled embedding), as the public
    CIFAR code does. One :class:`AttentionFusion` per level, sized from the probed channels
    (fusion width ``mid_channels``, default ``min(512, student embedding dim)`` as the public
    CIFAR code; its ImageNet R50 -> MobileNet-V1 setting is 256), runs from the deepest level
    (no fusion) to the shallowest, each fusing the previous one's map (the review path);
    their outputs are resized to the teacher's maps. The ABF modules are trained with the
    student.
    """

    requires_teacher = True

    def __init__(self, context: BuildContext, mid_channels: int | None = None) -> None:
        super().__init__()
        if mid_channels is not None:
            check_count("reviewkd: mid_channels", mid_channels)
        students = student_levels(context.student_probe)
        teachers = teacher_levels(need_teacher_probe("reviewkd", context))
        if len(students) != len(teachers):
            raise ValueError(
                "reviewkd: pairs each student stage after the stem with the teacher's, plus the "
                f"embeddings; the student has {len(students) - 1} such stages, the teacher "
                f"{len(teachers) - 1}"
            )
        if mid_channels is None:
            mid_channels = min(MAX_MID_CHANNELS, students[-1].shape[1])
        last = len(students) - 1
        self.abfs = nn.ModuleList(
            AttentionFusion(s.shape[1], mid_channels, t.shape[1], fuse=index < last)
            for index, (s, t) in enumerate(zip(students, teachers))
        )

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teachers = teacher_levels(need_teacher("reviewkd", outputs))
        students = student_levels(outputs.student)
        fused: list[torch.Tensor] = []
        deeper = None
        for abf, student, teacher in zip(
            reversed(self.abfs), reversed(students), reversed(teachers)
        ):
            out, deeper = abf(student, deeper, teacher.shape[-2:])
            fused.append(out)
        return hcl_loss(fused[::-1], teachers)
