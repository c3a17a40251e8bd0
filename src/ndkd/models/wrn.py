"""Wide ResNets (Zagoruyko & Komodakis 2016), WRN-depth-k for 32x32 inputs.

Pre-activation blocks (BN-ReLU-conv twice); three stages of ``(depth - 4) / 6`` blocks with
``16k``, ``32k`` and ``64k`` channels at 32x32, 16x16 and 8x8, then BN-ReLU and the
classifier. Parameter names follow the public CIFAR-100 checkpoints: stages ``block1..3``
each holding a ``layer`` sequence, the projection shortcut ``convShortcut`` (a bare 1x1
convolution), the final BN ``bn1`` and the classifier ``fc``.

Stages (as the public code exposes them): the stem convolution's output and each stage's
raw block output (pre-activation networks apply BN-ReLU at the start of the next block). The
pre-activation of a stage output is that BN's output: the next stage's first ``bn1``, or the
final ``bn1`` for the last stage; the stem's is the stem output itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.models.base import ZooModel, conv1x1, conv3x3, init_weights
from ndkd.models.output import ModelOutput, StageInfo


class WideBlock(nn.Module):
    """Pre-activation basic block; returns ``(out, bn1(x))``, the input's pre-activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.convShortcut = (
            None if in_channels == out_channels else conv1x1(in_channels, out_channels, stride)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        preact = self.bn1(x)
        act = F.relu(preact)
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        # The identity shortcut carries the raw input, the projection the activated one.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut, preact


class WideResNet(ZooModel):
    """WRN-``depth``-``widen`` for 32x32 inputs."""

    def __init__(self, depth: int, widen: int, num_classes: int = 100):
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (10, 16, 22, ...), got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        super().__init__(
            num_classes,
            embedding_dim=widths[-1],
            stage_info=[StageInfo(c, s) for c, s in zip(widths, (1, 1, 2, 4))],
        )
        self.conv1 = conv3x3(3, widths[0])
        for index, stride in enumerate((1, 2, 2), start=1):
            in_channels, width = widths[index - 1], widths[index]
            layers = [WideBlock(in_channels, width, stride)]
            layers += [WideBlock(width, width) for _ in range(blocks - 1)]
            self.add_module(f"block{index}", nn.ModuleDict({"layer": nn.Sequential(*layers)}))
        self.bn1 = nn.BatchNorm2d(widths[-1])
        self.fc = nn.Linear(widths[-1], num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)  # default weight, zero bias, as the reference

    def forward(self, x: torch.Tensor) -> ModelOutput:
        x = self.conv1(x)
        stages, preacts = [x], [x]
        for stage in (self.block1, self.block2, self.block3):
            for index, block in enumerate(stage["layer"]):
                x, preact = block(x)
                if index == 0 and len(stages) > 1:
                    preacts.append(preact)  # pre-activation of the previous stage's output
            stages.append(x)
        preact = self.bn1(x)
        preacts.append(preact)
        return self.head(F.relu(preact), stages, preacts)
