"""ResNet-50 adapted to CIFAR: a 3x3 stride-1 stem (no max-pool) and four bottleneck stages.

Stages run at 32x32, 32x32, 16x16 and 8x8 with 256, 512, 1024 and 2048 output channels. The
projection shortcut is a 1x1 convolution + BN named ``shortcut`` and the classifier
``linear``, as in the public CIFAR-100 ResNet-50 teacher checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.models.base import ZooModel, conv1x1, conv3x3, init_weights, projection, relu_pair
from ndkd.models.output import ModelOutput, StageInfo

EXPANSION = 4
WIDTHS = (64, 128, 256, 512)
BLOCKS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4; returns ``(out, preact)``."""

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out_channels)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return relu_pair(out + shortcut)


class CifarResNet50(ZooModel):
    """ResNet-50 (bottleneck blocks 3-4-6-3) for 32x32 inputs."""

    classifier_name = "linear"

    def __init__(self, num_classes: int = 100):
        super().__init__(
            num_classes,
            embedding_dim=WIDTHS[-1] * EXPANSION,
            stage_info=[StageInfo(64, 1)]
            + [StageInfo(w * EXPANSION, s) for w, s in zip(WIDTHS, (1, 2, 4, 8))],
        )
        self.conv1 = conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        in_channels = 64
        for index, (width, count) in enumerate(zip(WIDTHS, BLOCKS), start=1):
            stride = 1 if index == 1 else 2
            layers = [Bottleneck(in_channels, width, stride)]
            layers += [Bottleneck(width * EXPANSION, width) for _ in range(count - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*layers))
            in_channels = width * EXPANSION
        self.linear = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        x = F.relu(self.bn1(self.conv1(x)))
        layers = (self.layer1, self.layer2, self.layer3, self.layer4)
        x, stages, preacts = self.forward_stages(x, layers)
        return self.head(x, stages, preacts)
