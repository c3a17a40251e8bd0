"""ShuffleNet V1 (Zhang et al. 2018) for CIFAR, 3 groups, stage widths 240/480/960.

A 1x1 stem with 24 channels at full resolution (no stride, no max-pool), three stages of
4, 8 and 4 bottlenecks, each stage opening with a stride-2 block whose output concatenates a
3x3 average-pooled shortcut; global average pooling and the classifier ``linear``.
Parameter names follow the public CIFAR code (``layer{1,2,3}.{i}.conv1..3/bn1..3``).
Initialisation: PyTorch's defaults, as in the reference CIFAR ShuffleNets, except the
classifier's bias, zero (its weight keeps PyTorch's default): the public ND code's student
wrapper (``EmbTrans`` in ``CIFAR/*/models/embtrans_cifar.py``) zeroes every ``nn.Linear``
bias of the student it wraps, which for these students is the classifier's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.models.base import ZooModel, channel_shuffle, conv1x1, conv3x3, relu_pair
from ndkd.models.output import ModelOutput, StageInfo

STEM = 24
WIDTHS = (240, 480, 960)
BLOCKS = (4, 8, 4)
GROUPS = 3


class ShuffleUnit(nn.Module):
    """Grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1; returns ``(out, preact)``.

    With ``stride`` 2 the branch produces ``out_channels - in_channels`` maps and is
    concatenated with the average-pooled input; with stride 1 it is added to the input. The
    first 1x1 of the network (on the 24-channel stem) is not grouped.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        branch = out_channels - in_channels if stride == 2 else out_channels
        mid = branch // 4
        self.first_groups = 1 if in_channels == STEM else groups
        self.conv1 = conv1x1(in_channels, mid, groups=self.first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, branch, groups=groups)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return relu_pair(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1))
        return relu_pair(out + x)


class ShuffleNetV1(ZooModel):
    """ShuffleNet V1 (g = 3) for 32x32 inputs."""

    classifier_name = "linear"

    def __init__(self, num_classes: int = 100):
        super().__init__(
            num_classes,
            embedding_dim=WIDTHS[-1],
            stage_info=[StageInfo(STEM, 1)] + [StageInfo(w, s) for w, s in zip(WIDTHS, (2, 4, 8))],
        )
        self.conv1 = conv1x1(3, STEM)
        self.bn1 = nn.BatchNorm2d(STEM)
        in_channels = STEM
        for index, (width, count) in enumerate(zip(WIDTHS, BLOCKS), start=1):
            layers = [ShuffleUnit(in_channels, width, 2, GROUPS)]
            layers += [ShuffleUnit(width, width, 1, GROUPS) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*layers))
            in_channels = width
        self.linear = nn.Linear(in_channels, num_classes)
        nn.init.zeros_(self.linear.bias)  # the public ND code's student wrapper

    def forward(self, x: torch.Tensor) -> ModelOutput:
        x = F.relu(self.bn1(self.conv1(x)))
        x, stages, preacts = self.forward_stages(x, (self.layer1, self.layer2, self.layer3))
        return self.head(x, stages, preacts)
