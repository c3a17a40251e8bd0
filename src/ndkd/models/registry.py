"""Names of the CIFAR zoo and the factory that builds them."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from ndkd.models.base import ZooModel
from ndkd.models.mobilenetv2 import MobileNetV2
from ndkd.models.resnet50_cifar import CifarResNet50
from ndkd.models.resnet_cifar import THIN, WIDE, CifarResNet
from ndkd.models.shufflenetv1 import ShuffleNetV1
from ndkd.models.shufflenetv2 import ShuffleNetV2
from ndkd.models.vgg import VGG, VGG8, VGG13
from ndkd.models.wrn import WideResNet

_MODELS: dict[str, Callable[[int], ZooModel]] = {
    **{f"resnet{d}": partial(CifarResNet, d, THIN) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": partial(CifarResNet, 8, WIDE),
    "resnet32x4": partial(CifarResNet, 32, WIDE),
    "resnet50_cifar": CifarResNet50,
    **{f"wrn_{d}_{k}": partial(WideResNet, d, k) for d in (16, 40) for k in (1, 2)},
    "vgg8": partial(VGG, VGG8),
    "vgg13": partial(VGG, VGG13),
    "mobilenetv2": MobileNetV2,
    "shufflenetv1": ShuffleNetV1,
    "shufflenetv2": ShuffleNetV2,
}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, in zoo order."""
    return list(_MODELS)


def create_model(name: str, num_classes: int = 100, in_channels: int = 3) -> ZooModel:
    """Build the CIFAR model ``name`` with a ``num_classes``-way classifier.

    ``in_channels`` other than 3 (e.g. 1 for the gray digits) replaces the stem convolution,
    the first ``Conv2d`` of every zoo model, by one with that many input channels (same
    name, Kaiming-normal init); the public checkpoints then no longer fit, by design.

    Raises:
        ValueError: ``name`` is not in :func:`list_models`, or ``in_channels < 1``.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(_MODELS)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}")
    model = _MODELS[name](num_classes=num_classes)
    if in_channels != 3:
        _replace_stem_conv(model, in_channels)
    return model


def _replace_stem_conv(model: nn.Module, in_channels: int) -> None:
    name, stem = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    conv = nn.Conv2d(
        in_channels,
        stem.out_channels,
        stem.kernel_size,
        stem.stride,
        stem.padding,
        groups=1,
        bias=stem.bias is not None,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, conv)
