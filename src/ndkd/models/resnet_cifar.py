"""CIFAR ResNets (He et al. 2016, the 6n+2 family) and their 4x-wide variants.

Three stages of basic blocks at 32x32, 16x16 and 8x8. The projection shortcut is a 1x1
convolution + BN named ``downsample``, used where the stride or the width changes, as in the
public CIFAR-100 teacher checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.models.base import ZooModel, conv3x3, init_weights, projection, relu_pair
from ndkd.models.output import ModelOutput, StageInfo

THIN = (16, 16, 32, 64)
WIDE = (32, 64, 128, 256)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with an identity or projection shortcut; returns ``(out, preact)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = projection(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return relu_pair(out + shortcut)


class CifarResNet(ZooModel):
    """ResNet-``depth`` for 32x32 inputs; ``widths`` = (stem, stage 1, stage 2, stage 3)."""

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 100):
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        blocks = (depth - 2) // 6
        stem, *stage_widths = widths
        super().__init__(
            num_classes,
            embedding_dim=stage_widths[-1],
            stage_info=[StageInfo(c, s) for c, s in zip(widths, (1, 1, 2, 4))],
        )
        self.conv1 = conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        in_channels = stem
        for index, (width, stride) in enumerate(zip(stage_widths, (1, 2, 2)), start=1):
            layers = [BasicBlock(in_channels, width, stride)]
            layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*layers))
            in_channels = width
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        x = F.relu(self.bn1(self.conv1(x)))
        x, stages, preacts = self.forward_stages(x, (self.layer1, self.layer2, self.layer3))
        return self.head(x, stages, preacts)
