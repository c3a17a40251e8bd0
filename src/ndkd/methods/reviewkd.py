"""The ReviewKD term: knowledge review with attention-based fusion (Chen et al., CVPR 2021),
on a classifier's stages and embedding or on a detector's FPN levels."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.checks import check_count
from ndkd.losses.reviewkd import hcl_loss
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher, need_teacher_probe
from ndkd.methods.registry import register
from ndkd.models.output import ModelOutput

MAX_MID_CHANNELS = 512  # the public code's cap on the fusion width


Levels = Literal["backbone", "fpn"]
PAIRINGS: dict[str, str] = {
    "backbone": "pairs each student stage after the stem with the teacher's, plus the embeddings",
    "fpn": "pairs each student stage map (FPN level) with the teacher's",
}
"""How each ``levels`` setting pairs the maps, for the refusals."""


def student_levels(output: ModelOutput, levels: Levels = "backbone") -> list[torch.Tensor]:
    """The student maps ReviewKD reviews, shallowest first. ``"backbone"``: each stage output
    after the stem (post-ReLU), then the embedding as a ``[B, D, 1, 1]`` map; ``"fpn"``: every
    stage map (a detector's FPN levels), no embedding."""
    if levels == "fpn":
        return list(output.stages)
    return [*output.stages[1:], output.embedding[:, :, None, None]]


def teacher_levels(output: ModelOutput, levels: Levels = "backbone") -> list[torch.Tensor]:
    """The teacher maps they are matched to. ``"backbone"``: the pre-ReLU stage outputs after
    the stem, then the embedding as a ``[B, D, 1, 1]`` map; ``"fpn"``: every stage map (FPN
    outputs have no activation)."""
    if levels == "fpn":
        return list(output.stages)
    return [*output.preact_stages[1:], output.embedding[:, :, None, None]]


def check_backbone_rows(role: str, output: ModelOutput) -> None:
    """Refuse ``levels: backbone`` where the stage maps have another batch than the
    embedding (a detector's rows: maps per image, embedding per RoI)."""
    rows = output.embedding.shape[0]
    if any(stage.shape[0] != rows for stage in output.stages):
        raise ValueError(
            f"reviewkd: the {role}'s stage maps are not one per embedding row ({rows} rows, "
            f"maps of batch {[stage.shape[0] for stage in output.stages]}), as a detector's FPN "
            "maps per image with RoI rows; set levels: fpn"
        )


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
    of :func:`teacher_levels`. ``levels``: ``"backbone"`` (classifiers: the stages after the
    stem, then the pooled embedding, as the public CIFAR and ImageNet code) or ``"fpn"``
    (detectors: every FPN level, P2-P6 of 256 channels, and nothing of the per-RoI rows, as
    the public Detection code). One :class:`AttentionFusion` per level, sized from the probed
    channels (fusion width ``mid_channels``, default ``min(512, channels of the deepest
    student level)``: the student embedding dim for ``"backbone"`` as the public CIFAR code
    (its ImageNet R50 -> MobileNet-V1 setting is 256), 256 for an FPN as the public Detection
    code), runs from the deepest level (no fusion) to the shallowest, each fusing the previous
    one's map (the review path); their outputs are resized to the teacher's maps. The ABF
    modules are trained with the student.
    """

    requires_teacher = True

    def __init__(
        self,
        context: BuildContext,
        mid_channels: int | None = None,
        levels: Levels = "backbone",
    ) -> None:
        super().__init__()
        if mid_channels is not None:
            check_count("reviewkd: mid_channels", mid_channels)
        if levels not in PAIRINGS:
            raise ValueError(f"reviewkd: levels must be one of {tuple(PAIRINGS)}, found {levels!r}")
        teacher = need_teacher_probe("reviewkd", context)
        if levels == "backbone":
            check_backbone_rows("student", context.student_probe)
            check_backbone_rows("teacher", teacher)
        students = student_levels(context.student_probe, levels)
        teachers = teacher_levels(teacher, levels)
        if len(students) != len(teachers) or not students:
            embedding = int(levels == "backbone")  # the one level that is not a stage
            raise ValueError(
                f"reviewkd: {PAIRINGS[levels]}; the student has {len(students) - embedding} "
                f"such stages, the teacher {len(teachers) - embedding}"
            )
        if mid_channels is None:
            mid_channels = min(MAX_MID_CHANNELS, students[-1].shape[1])
        last = len(students) - 1
        self.levels = levels
        self.abfs = nn.ModuleList(
            AttentionFusion(s.shape[1], mid_channels, t.shape[1], fuse=index < last)
            for index, (s, t) in enumerate(zip(students, teachers))
        )

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teachers = teacher_levels(need_teacher("reviewkd", outputs), self.levels)
        students = student_levels(outputs.student, self.levels)
        fused: list[torch.Tensor] = []
        deeper = None
        for abf, student, teacher in zip(
            reversed(self.abfs), reversed(students), reversed(teachers)
        ):
            out, deeper = abf(student, deeper, teacher.shape[-2:])
            fused.append(out)
        return hcl_loss(fused[::-1], teachers)
