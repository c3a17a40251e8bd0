"""MobileNet-V1 (Howard et al., 2017): the ImageNet student of the KD literature.

Not in torchvision. Parameter names follow the public ImageNet KD code whose MobileNet-V1
checkpoints the ND paper and its baselines use: ``MobileNet``/``MobileNetV1`` in
``WangYZ1608/Knowledge-Distillation-via-ND`` (``ImageNet/Models/mobilenet.py``,
``ImageNet/ReviewKD++/models/mobilenet.py``), the same definition as
``dvlab-research/ReviewKD`` and ``megvii-research/mdistiller``
(``mdistiller/models/imagenet/mobilenetv1.py``). One ``nn.Sequential`` ``model`` of 14
blocks: ``model.0`` is a 3x3 stride-2 conv + BN + ReLU to 32 channels, ``model.1`` to
``model.13`` are depthwise-separable blocks (3x3 depthwise conv + BN + ReLU, then 1x1
pointwise conv + BN + ReLU, named ``.0``/``.1`` and ``.3``/``.4``); the classifier is ``fc``.
The public ``model.14`` (``AvgPool2d(7)``, no parameters) is global average pooling here,
identical at 224x224 and defined at any input size. 4,231,976 parameters for 1000 classes;
the embedding is the 1024-d pooled feature.

Stages: the output of the last block at each resolution, ``model.1`` (64 channels, stride 2,
the stem slot that feature methods skip), ``model.3`` (128, 4), ``model.5`` (256, 8),
``model.11`` (512, 16) and ``model.13`` (1024, 32): the public code's ``feat1..feat4`` after
the stem. Pre-activations are those blocks' last BN outputs (``get_bn_before_relu`` there).
Initialisation: PyTorch's defaults, as the public definition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.models.base import ZooModel, conv_bn
from ndkd.models.output import ModelOutput, StageInfo

# (output channels, stride) of the depthwise-separable blocks model.1 .. model.13.
BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)
STEM_CHANNELS = 32
STAGE_BLOCKS = (1, 3, 5, 11, 13)


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv + BN + ReLU, then 1x1 conv + BN + ReLU (indices 0-2 and 3-5)."""
    return nn.Sequential(
        *conv_bn(in_channels, in_channels, 3, stride, groups=in_channels, relu=True),
        *conv_bn(in_channels, out_channels, 1, relu=True),
    )


class MobileNetV1(ZooModel):
    """MobileNet-V1 at width 1 under the public ImageNet KD layout (see the module doc)."""

    classifier_name = "fc"

    def __init__(self, num_classes: int = 1000):
        channels, stride = [STEM_CHANNELS], [2]
        for out_channels, block_stride in BLOCKS:
            channels.append(out_channels)
            stride.append(stride[-1] * block_stride)
        super().__init__(
            num_classes,
            embedding_dim=channels[-1],
            stage_info=[StageInfo(channels[i], stride[i]) for i in STAGE_BLOCKS],
        )
        blocks = [conv_bn(3, STEM_CHANNELS, 3, stride=2, relu=True)]
        for index, (out_channels, block_stride) in enumerate(BLOCKS):
            blocks.append(depthwise_separable(channels[index], out_channels, block_stride))
        self.model = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        stages, preacts = [], []
        for index, block in enumerate(self.model):
            if index in STAGE_BLOCKS:
                # The block's final ReLU is applied out of place so the BN output survives.
                preact = block[:-1](x)
                x = F.relu(preact)
                stages.append(x)
                preacts.append(preact)
            else:
                x = block(x)
        return self.head(x, stages, preacts)
