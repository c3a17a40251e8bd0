"""The OFD term: overhaul of feature distillation (Heo et al., ICCV 2019) on pre-ReLU stages."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.losses.ofd import ofd_loss, ofd_margin
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher, need_teacher_probe
from ndkd.methods.registry import register
from ndkd.models.output import ModelOutput


def _holds(output: object, tensor: torch.Tensor) -> bool:
    if isinstance(output, (tuple, list)):
        return any(item is tensor for item in output)
    return output is tensor


def _trace_input(model: nn.Module, probe: ModelOutput) -> torch.Tensor:
    """Random images the size the probe saw: the first conv's input channels, the stem map's
    size times the stem's stride (``model.stage_info``)."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    stage_info = getattr(model, "stage_info", None)
    if first_conv is None or not stage_info or not probe.preact_stages:
        raise ValueError(
            "ofd: the teacher must be an ndkd zoo model (convolutions, stage_info and "
            "preact_stages) to locate the BatchNorm layers that give the margins"
        )
    height, width = probe.preact_stages[0].shape[-2:]
    stride = stage_info[0].stride
    generator = torch.Generator().manual_seed(0)
    size = (2, first_conv.in_channels, height * stride, width * stride)
    return torch.randn(size, generator=generator).to(first_conv.weight)


def bn_before_relu(
    model: nn.Module, images: torch.Tensor, stages: Sequence[int]
) -> list[nn.Module]:
    """For each index in ``stages``, the BatchNorm whose output feeds ``preact_stages[index]``.

    One forward pass (eval mode, no gradient; the model's mode is restored) records every
    module's output in completion order; the pre-activation is produced by the first module
    whose output is (or holds) that very tensor, and the BN is the last ``BatchNorm2d`` that
    completed up to then with an output of the pre-activation's shape: the last block's final
    BN of a residual stage, the next block's first BN of a pre-activation (WRN) stage, as
    the public code picks them (a stage whose only such BN is a projection shortcut's gets
    that one).

    Raises:
        ValueError: when no such BN exists (e.g. a stage output concatenating a BN output
            with other maps, as ShuffleNetV2's).
    """
    records: list[tuple[nn.Module, object]] = []
    handles = [
        module.register_forward_hook(lambda mod, _, out: records.append((mod, out)))
        for module in model.modules()
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            output = model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    found = []
    for index in stages:
        preact = output.preact_stages[index]
        produced = next((k for k, (_, out) in enumerate(records) if _holds(out, preact)), -1)
        candidates = [
            module
            for module, out in records[: produced + 1]
            if isinstance(module, nn.BatchNorm2d)
            and isinstance(out, torch.Tensor)
            and out.shape == preact.shape
        ]
        if not candidates or candidates[-1].weight is None:
            raise ValueError(
                f"ofd: no affine BatchNorm2d produces the pre-activation of teacher stage "
                f"{index} (shape {tuple(preact.shape[1:])}); OFD takes its margin from one"
            )
        found.append(candidates[-1])
    return found


def connector(in_channels: int, out_channels: int) -> nn.Sequential:
    """OFD's student transform: 1x1 conv (no bias) + BN, initialised as the public code."""
    conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    nn.init.normal_(conv.weight, std=math.sqrt(2.0 / out_channels))
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


@register("ofd")
class OFDTerm(Term):
    """OFD: partial L2 between connected student and margin-clamped teacher pre-ReLU maps.

    Uses the last ``n`` pre-ReLU stage maps after the stem of each model, ``n`` the smaller
    stage count (as mdistiller aligns them). Per stage: a :func:`connector` (trained with
    the student) maps the student's channels to the teacher's; the teacher map is average-
    pooled to the student's size; the margin per channel is :func:`ofd_margin` of the
    Gaussian ``N(beta, gamma^2)`` given by the affine parameters of the teacher BN found by
    :func:`bn_before_relu` (the public code's choice: the BN's output distribution, not its
    running statistics). Margins are buffers, saved with the term.
    """

    requires_teacher = True

    def __init__(self, context: BuildContext) -> None:
        super().__init__()
        teacher = need_teacher_probe("ofd", context)
        if context.teacher is None:
            raise ValueError("ofd: needs the teacher model, whose BatchNorm layers give margins")
        student_count = len(context.student_probe.preact_stages)
        teacher_count = len(teacher.preact_stages)
        count = min(student_count, teacher_count) - 1
        if count < 1:
            raise ValueError(
                "ofd: the student and the teacher need pre-ReLU stage maps after the stem, "
                f"found {student_count} and {teacher_count} maps"
            )
        self.student_first = student_count - count
        teacher_stages = range(teacher_count - count, teacher_count)
        students = context.student_probe.preact_stages[self.student_first :]
        self.connectors = nn.ModuleList(
            connector(s.shape[1], teacher.preact_stages[t].shape[1])
            for s, t in zip(students, teacher_stages)
        )
        self.teacher_first = teacher_stages.start
        images = context.probe_images
        if images is None:
            images = _trace_input(context.teacher, teacher)
        bns = bn_before_relu(context.teacher, images, teacher_stages)
        for index, bn in enumerate(bns):
            self.register_buffer(f"margin{index}", ofd_margin(bn.bias, bn.weight))

    def margins(self) -> list[torch.Tensor]:
        return [getattr(self, f"margin{index}") for index in range(len(self.connectors))]

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher_maps = need_teacher("ofd", outputs).preact_stages[self.teacher_first :]
        student_maps = outputs.student.preact_stages[self.student_first :]
        students = [conn(s) for conn, s in zip(self.connectors, student_maps)]
        teachers = [F.adaptive_avg_pool2d(t, s.shape[-2:]) for s, t in zip(students, teacher_maps)]
        return ofd_loss(students, teachers, self.margins())
