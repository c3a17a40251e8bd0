"""ShuffleNet V2 1x (Ma et al. 2018) for CIFAR: stage widths 116/232/464, 1024-d embedding.

A 1x1 stem with 24 channels at full resolution (no stride, no max-pool); three stages, each
a stride-2 down-sampling unit followed by 3, 7 and 3 basic units; a 1x1 conv to 1024
channels + BN + ReLU, global average pooling and the classifier ``linear``. Parameter names
follow the public CIFAR code (``layer{k}.0`` the down-sampling unit with ``conv1..5``,
``layer{k}.{i>0}`` the basic units with ``conv1..3``).

Pre-activations: a unit's output is ``relu`` of its pre-activation, in the same (shuffled)
channel order. (The public code returns the last unit's pre-activation before the channel
shuffle; ndkd shuffles it too so ``stages[i]`` and ``preact_stages[i]`` line up.)
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
WIDTHS = (116, 232, 464)
BLOCKS = (3, 7, 3)
LAST_CHANNELS = 1024


class BasicUnit(nn.Module):
    """Split channels in half; 1x1, depthwise 3x3, 1x1 on the second half; concat; shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = conv1x1(half, half)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = conv3x3(half, half, groups=half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = conv1x1(half, half)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, branch = x.chunk(2, dim=1)
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(branch)))))
        # ``kept`` is a previous unit's ReLU output, so relu(preact) leaves it unchanged.
        preact = torch.cat([kept, self.bn3(self.conv3(branch))], dim=1)
        return relu_pair(channel_shuffle(preact, 2))


class DownUnit(nn.Module):
    """Stride-2 unit: two branches on the full input, each giving half of ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        half = out_channels // 2
        # Left branch: depthwise 3x3 stride 2, then 1x1.
        self.conv1 = conv3x3(in_channels, in_channels, stride=2, groups=in_channels)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = conv1x1(in_channels, half)
        self.bn2 = nn.BatchNorm2d(half)
        # Right branch: 1x1, depthwise 3x3 stride 2, 1x1.
        self.conv3 = conv1x1(in_channels, half)
        self.bn3 = nn.BatchNorm2d(half)
        self.conv4 = conv3x3(half, half, stride=2, groups=half)
        self.bn4 = nn.BatchNorm2d(half)
        self.conv5 = conv1x1(half, half)
        self.bn5 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        left = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = self.bn5(self.conv5(right))
        return relu_pair(channel_shuffle(torch.cat([left, right], dim=1), 2))


class ShuffleNetV2(ZooModel):
    """ShuffleNet V2 1x for 32x32 inputs."""

    classifier_name = "linear"

    def __init__(self, num_classes: int = 100):
        super().__init__(
            num_classes,
            embedding_dim=LAST_CHANNELS,
            stage_info=[StageInfo(STEM, 1)] + [StageInfo(w, s) for w, s in zip(WIDTHS, (2, 4, 8))],
        )
        self.conv1 = conv1x1(3, STEM)
        self.bn1 = nn.BatchNorm2d(STEM)
        in_channels = STEM
        for index, (width, count) in enumerate(zip(WIDTHS, BLOCKS), start=1):
            layers = [DownUnit(in_channels, width)] + [BasicUnit(width) for _ in range(count)]
            self.add_module(f"layer{index}", nn.Sequential(*layers))
            in_channels = width
        self.conv2 = conv1x1(in_channels, LAST_CHANNELS)
        self.bn2 = nn.BatchNorm2d(LAST_CHANNELS)
        self.linear = nn.Linear(LAST_CHANNELS, num_classes)
        nn.init.zeros_(self.linear.bias)  # the public ND code's student wrapper

    def forward(self, x: torch.Tensor) -> ModelOutput:
        x = F.relu(self.bn1(self.conv1(x)))
        x, stages, preacts = self.forward_stages(x, (self.layer1, self.layer2, self.layer3))
        return self.head(F.relu(self.bn2(self.conv2(x))), stages, preacts)
