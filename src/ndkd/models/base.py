"""Shared pieces of the CIFAR zoo: the model base class, layer helpers and initialisation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ndkd.models.output import ModelOutput, StageInfo


class ZooModel(nn.Module):
    """Base class of every ndkd CIFAR model.

    Subclasses build their layers under the parameter names of the public CIFAR-100
    checkpoints, set ``classifier_name`` to the dotted name of the final ``nn.Linear`` and
    call :meth:`head` at the end of ``forward``.

    Attributes:
        num_classes: number of output logits ``C``.
        embedding_dim: width ``D`` of the embedding (the classifier's input).
        stage_info: one :class:`StageInfo` per entry of ``ModelOutput.stages``, for a 32x32
            input (strides are relative to the input, so they hold for any input size that
            the network divides evenly).
    """

    classifier_name: str = "fc"

    def __init__(self, num_classes: int, embedding_dim: int, stage_info: Sequence[StageInfo]):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.stage_info = list(stage_info)

    def get_classifier(self) -> nn.Linear:
        """The final linear layer, whose input is the embedding."""
        layer = self.get_submodule(self.classifier_name)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{self.classifier_name!r} is a {type(layer).__name__}, not nn.Linear")
        return layer

    def head(
        self, features: torch.Tensor, stages: list[torch.Tensor], preacts: list[torch.Tensor]
    ) -> ModelOutput:
        """Global-average-pool ``features`` into the embedding and classify it."""
        embedding = features.mean(dim=(2, 3))
        return ModelOutput(
            logits=self.get_classifier()(embedding),
            embedding=embedding,
            stages=stages,
            preact_stages=preacts,
        )

    def forward_stages(
        self, x: torch.Tensor, stages: Iterable[nn.Sequential]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run ``x`` (the stem output) through ``stages`` of blocks returning ``(out, preact)``.

        Returns the last output and the lists of stage outputs and pre-activations, both
        starting with the stem output itself (as the public code does).
        """
        outputs, preacts = [x], [x]
        for stage in stages:
            for block in stage:
                x, preact = block(x)
            outputs.append(x)
            preacts.append(preact)
        return x, outputs, preacts


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    relu: bool = False,
) -> nn.Sequential:
    """``Conv2d`` (no bias, "same" padding) then ``BatchNorm2d``, optionally then ``ReLU``.

    Registered as a ``Sequential`` so parameters are named ``.0.weight`` and ``.1.*`` as in the
    public checkpoints' shortcut and MobileNetV2 layers.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """The 1x1 conv + BN shortcut of a residual block, or ``None`` where identity fits."""
    if stride == 1 and in_channels == out_channels:
        return None
    return conv_bn(in_channels, out_channels, 1, stride)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(
        in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, groups=groups, bias=False)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: view channels as ``[groups, C / groups]`` and transpose."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def relu_pair(preact: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(relu(preact), preact)``: the ``(out, preact)`` pair a residual block returns."""
    return F.relu(preact), preact


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Initialise as the reference CIFAR models do.

    Convolutions: Kaiming-normal, ``fan_out`` mode, ReLU gain (``N(0, 2 / (k*k*C_out))``),
    bias 0. BatchNorm: weight 1, bias 0. Linear: ``N(0, linear_std)`` weight and zero bias if
    ``linear_std`` is given, else PyTorch's default.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, std=linear_std)
            nn.init.zeros_(module.bias)


def replace_stem_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first ``Conv2d`` that ``model`` registers by one taking ``in_channels``
    channels (same name and geometry, Kaiming-normal init)."""
    name, stem = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    conv = nn.Conv2d(
        in_channels,
        stem.out_channels,
        stem.kernel_size,
        stem.stride,
        stem.padding,
        dilation=stem.dilation,
        groups=1,
        bias=stem.bias is not None,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.set_submodule(name, conv)
