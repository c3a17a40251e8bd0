"""MobileNetV2 for CIFAR at half width (the "MobileNetV2" student of the KD literature).

A stride-2 3x3 stem, seven groups of inverted-residual blocks (expansion 6 except the first
group), a 1x1 conv to 1280 channels, global average pooling and the classifier
``classifier.0``. With width 0.5 the groups have 8, 12, 16, 32, 48, 80 and 160 channels and
the last feature map is 2x2. Parameter names follow the public code (``conv1``,
``blocks.{group}.{block}.conv.{i}``, ``conv2``, ``classifier.0``).

Stages (as the public code exposes them): the stem output and the outputs of groups 1, 2, 4
and 6. Inverted-residual outputs are linear (no activation), so their pre-activations are the
outputs themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from ndkd.models.base import ZooModel, conv_bn, init_weights
from ndkd.models.output import ModelOutput, StageInfo

# (channels at width 1, blocks, stride of the first block) per group; the first group does
# not expand.
GROUPS = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))
STAGE_GROUPS = (1, 2, 4, 6)
LAST_CHANNELS = 1280  # widened only for width > 1


class InvertedResidual(nn.Module):
    """1x1 expand + BN + ReLU, 3x3 depthwise + BN + ReLU, 1x1 project + BN (linear)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn(in_channels, hidden, 1, relu=True),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden, relu=True),
            *conv_bn(hidden, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(ZooModel):
    """MobileNetV2 with channel multiplier ``width`` and block expansion ``expansion``."""

    classifier_name = "classifier.0"

    def __init__(self, num_classes: int = 100, width: float = 0.5, expansion: int = 6):
        channels = [int(32 * width)] + [int(c * width) for c, _, _ in GROUPS]
        strides = [2]
        for _, _, stride in GROUPS:
            strides.append(strides[-1] * stride)
        last_channels = max(LAST_CHANNELS, int(LAST_CHANNELS * width))
        super().__init__(
            num_classes,
            embedding_dim=last_channels,
            stage_info=[StageInfo(channels[0], strides[0])]
            + [StageInfo(channels[g + 1], strides[g + 1]) for g in STAGE_GROUPS],
        )
        self.conv1 = conv_bn(3, channels[0], 3, stride=2, relu=True)
        self.blocks = nn.ModuleList()
        in_channels = channels[0]
        for group, (_, count, stride) in enumerate(GROUPS):
            out_channels, ratio = channels[group + 1], expansion if group else 1
            layers = []
            for index in range(count):
                block_stride = stride if index == 0 else 1
                layers.append(InvertedResidual(in_channels, out_channels, block_stride, ratio))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*layers))
        self.conv2 = conv_bn(in_channels, last_channels, 1, relu=True)
        self.classifier = nn.Sequential(nn.Linear(last_channels, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        x = self.conv1(x)
        stages = [x]
        for index, group in enumerate(self.blocks):
            x = group(x)
            if index in STAGE_GROUPS:
                stages.append(x)
        return self.head(self.conv2(x), stages, list(stages))
