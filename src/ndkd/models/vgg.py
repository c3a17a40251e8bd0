"""VGG with batch normalization for 32x32 inputs (the "vgg8"/"vgg13" of the KD literature).

Five blocks of 3x3 conv (with bias) + BN + ReLU, the last ReLU of each block left out so the
block output is its pre-activation. 2x2 max-pools sit between blocks 0-1, 1-2 and 2-3 (the
pool between blocks 3 and 4 is skipped on 32x32 inputs, as in the reference), then global
average pooling and the classifier ``classifier``. Parameter names follow the public
CIFAR-100 checkpoints (``block{i}.{j}``, indices counting the ReLU modules).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.models.base import ZooModel, init_weights
from ndkd.models.output import ModelOutput, StageInfo

VGG8 = ((64,), (128,), (256,), (512,), (512,))
VGG13 = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))
STRIDES = (1, 2, 4, 8, 8)


def _block(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """VGG-BN with blocks of the given ``widths`` (five tuples of conv widths)."""

    classifier_name = "classifier"

    def __init__(self, widths: Sequence[Sequence[int]], num_classes: int = 100):
        outs = [block[-1] for block in widths]
        super().__init__(
            num_classes,
            embedding_dim=outs[-1],
            stage_info=[StageInfo(c, s) for c, s in zip(outs, STRIDES)],
        )
        in_channels = 3
        for index, block in enumerate(widths):
            self.add_module(f"block{index}", _block(in_channels, block))
            in_channels = block[-1]
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        x = F.relu(self.block0(x))
        stages, preacts = [x], [x]
        for index, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            if STRIDES[index + 1] > STRIDES[index]:
                x = F.max_pool2d(x, 2)
            preact = block(x)
            x = F.relu(preact)
            stages.append(x)
            preacts.append(preact)
        return self.head(x, stages, preacts)
