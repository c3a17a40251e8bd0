"""The one model factory: the ndkd zoo (plain names), ``torchvision:NAME``, ``timm:NAME`` and
the Faster R-CNN and RetinaNet detectors (``fasterrcnn_<backbone>_fpn``,
``retinanet_<backbone>_fpn``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ndkd.models.base import ZooModel, replace_stem_conv
from ndkd.models.external import SourceModel
from ndkd.models.mobilenetv1 import MobileNetV1
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
_IMAGENET_MODELS: dict[str, Callable[[int], ZooModel]] = {"mobilenet_v1": MobileNetV1}
_ZOO = {**_MODELS, **_IMAGENET_MODELS}
SOURCES = ("torchvision", "timm")
_DETECTORS = ("fasterrcnn_", "retinanet_")


def list_models(source: str = "cifar") -> list[str]:
    """Names accepted by :func:`create_model`.

    ``"cifar"``: the CIFAR zoo, in zoo order; ``"imagenet"``: ndkd's own ImageNet models
    (``mobilenet_v1``); ``"torchvision"``/``"timm"``: that library's classifiers, prefixed
    (``"torchvision:resnet18"``, ``"timm:vit_small_patch16_224"``); ``"detection"``: the Faster
    R-CNN and RetinaNet detectors (``"fasterrcnn_resnet50_fpn"``,
    ``"retinanet_resnet50_fpn"``, :mod:`ndkd.models.detection`).
    """
    if source == "cifar":
        return list(_MODELS)
    if source == "imagenet":
        return list(_IMAGENET_MODELS)
    if source == "torchvision":
        from ndkd.models.torchvision_models import classifier_names

        return [f"torchvision:{name}" for name in classifier_names()]
    if source == "timm":
        import timm

        return [f"timm:{name}" for name in timm.list_models()]
    if source == "detection":
        from ndkd.models.detection import detector_names

        return detector_names()
    raise ValueError(
        f"unknown model source {source!r}; available: cifar, imagenet, {', '.join(SOURCES)}, "
        "detection"
    )


def create_model(
    name: str,
    num_classes: int = 100,
    in_channels: int = 3,
    pretrained: bool = False,
    **options: Any,
) -> ZooModel | SourceModel:
    """Build model ``name`` with a ``num_classes``-way classifier under the output contract.

    ``name`` is a zoo name (``list_models("cifar")``, ``list_models("imagenet")``),
    ``"torchvision:NAME"`` (any classifier of ``torchvision.models``, see
    :mod:`ndkd.models.torchvision_models`) or ``"timm:NAME"`` (any timm model with a final
    ``nn.Linear``, see :mod:`ndkd.models.timm_models`); those keep their library's state-dict
    keys. ``options`` go to the torchvision/timm builder
    (e.g. ``img_size=32`` for a timm ViT); zoo models take none. ``torchvision:`` models also
    take ``pool`` (``"avg"``, ``"max"``, ``"avgmax"``: the global pooling before the
    classifier) and ``embedding_dim`` (N > 0: a ``Linear(D, N)`` projection before the
    classifier, whose output is the embedding), see :mod:`ndkd.models.torchvision_models`.

    ``in_channels`` other than 3 (e.g. 1 for the gray digits) replaces the stem convolution,
    the first ``Conv2d``, by one with that many input channels (same name, Kaiming-normal
    init; timm adapts it itself through ``in_chans``); the public checkpoints then no longer
    fit, by design. ``pretrained`` asks torchvision (``weights="DEFAULT"``) or timm for their
    weights (local cache first, else a download); the zoo has none.

    Raises:
        ValueError: unknown name or source, ``in_channels < 1``, options for a zoo model,
            ``pretrained`` for a zoo model or weights that cannot be fetched (one line), a
            torchvision/timm model whose final layer is not an ``nn.Linear``.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}")
    source, _, arch = name.rpartition(":")
    if not source and name.startswith(_DETECTORS):
        from ndkd.models.detection import create_detector

        return create_detector(name, num_classes, in_channels, pretrained, **options)
    if source == "torchvision":
        from ndkd.models.torchvision_models import create_torchvision_model

        return create_torchvision_model(arch, num_classes, in_channels, pretrained, **options)
    if source == "timm":
        from ndkd.models.timm_models import create_timm_model

        return create_timm_model(arch, num_classes, in_channels, pretrained, **options)
    if source:
        raise ValueError(
            f"unknown model source {source!r} in {name!r}; available: "
            f"{', '.join(f'{s}:NAME' for s in SOURCES)}, or a zoo name"
        )
    if name not in _ZOO:
        raise ValueError(
            f"unknown model {name!r}; zoo names: {', '.join(_ZOO)}; or torchvision:NAME, "
            "timm:NAME (ndkd.models.list_models('torchvision'|'timm'))"
        )
    if pretrained:
        raise ValueError(
            f"{name}: the ndkd zoo has no pretrained weights; give a checkpoint "
            "(or use torchvision:NAME / timm:NAME for pretrained ImageNet models)"
        )
    if options:
        raise ValueError(f"{name}: zoo models take no options, got {', '.join(options)}")
    model = _ZOO[name](num_classes=num_classes)
    if in_channels != 3:
        replace_stem_conv(model, in_channels)
    return model
