"""Faster R-CNN detectors (torchvision's ``FasterRCNN`` on FPN backbones) and the pieces of
their forward that distillation needs.

Names: ``fasterrcnn_<backbone>_fpn`` (:func:`detector_names`), built by
:func:`create_detector` with torchvision's parameter names (``backbone.body.*``,
``backbone.fpn.*``, ``rpn.*``, ``roi_heads.*``), so torchvision's COCO state dict of
``fasterrcnn_resnet50_fpn`` loads strictly into ``fasterrcnn_resnet50_fpn`` with 91 classes.
Every FPN has 256 channels at strides 4, 8, 16, 32 and the extra max-pooled level at 64
(``"0"``..``"3"``, ``"pool"``); the RPN, RoI heads and their defaults are torchvision's (RoI
sampler: 512 proposals per image, a quarter positive at most; box head: ``TwoMLPHead``, 1024-d).

- ``resnet18`` .. ``resnet152``: ``layer1``..``layer4`` (torchvision's
  ``_resnet_fpn_extractor``).
- ``mobilenet_v2``: ``features``, the last map of each stride: ``features.3`` (stride 4,
  24 channels), ``features.6`` (8, 32), ``features.13`` (16, 96), ``features.18`` (32, 1280).
- ``vgg11``, ``vgg16``: ``features``, the last map of each stride: the last ReLU of the conv3,
  conv4 and conv5 blocks (strides 4, 8, 16; 256, 512, 512 channels) and the final max pooling
  (32, 512); VGG without BatchNorm.

``pretrained`` loads torchvision's ImageNet weights (``IMAGENET1K_V1``) into the backbone and
follows torchvision's detection recipe: BatchNorms become ``FrozenBatchNorm2d`` and the first
two of the backbone's five stages are frozen (ResNet: ``conv1`` and ``layer1``, torchvision's
``trainable_backbone_layers=3``; MobileNetV2: everything before stride 8, ``features.0-3``;
VGG: the conv1 and conv2 blocks, as the original Faster R-CNN VGG16). Without it, as
torchvision's builders with no weights, the backbone keeps trainable ``BatchNorm2d`` layers and
every parameter trains (its state dict then has torchvision's ``num_batches_tracked`` keys;
checkpoints without them, such as torchvision's published COCO weights, still load).

The detector's own ``transform`` is not used here: the detection task resizes and normalises
the images (its ``GeneralizedRCNNTransform``) and calls the functions below.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops.misc import FrozenBatchNorm2d

from ndkd.models import pretrained as weights_source
from ndkd.models.external import SourceModel, adopt
from ndkd.models.output import ModelOutput, StageInfo

log = logging.getLogger(__name__)

PREFIX, SUFFIX = "fasterrcnn_", "_fpn"
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BACKBONES = (*RESNETS, "mobilenet_v2", "vgg11", "vgg16")
FPN_CHANNELS = 256
FPN_STRIDES = (4, 8, 16, 32, 64)
CLASSIFIER = "roi_heads.box_predictor.cls_score"
BOX_REGRESSION = "box_regression"
"""The ``ModelOutput.heads`` key of the RoI box regression ``[R, 4 (C + 1)]``."""
BACKBONE_STAGES, TRAINABLE_STAGES = 5, 3
"""A backbone's stages, and how many train on pretrained weights (torchvision's default)."""
_IMAGENET_WEIGHTS = "IMAGENET1K_V1"
_PROBE_SIZE = 64
_OPTIONS = tuple(
    name
    for name, parameter in inspect.signature(FasterRCNN.__init__).parameters.items()
    if name.startswith(("rpn_", "box_")) and isinstance(parameter.default, (int, float))
)
"""``FasterRCNN``'s numeric RPN and RoI-head settings, the options :func:`create_detector`
takes (e.g. ``rpn_post_nms_top_n_train``, ``box_batch_size_per_image``)."""


class DetectorModel(SourceModel):
    """Mixin of ndkd's detectors: torchvision's ``FasterRCNN`` (its modules, keys and own
    ``forward``) with :class:`~ndkd.models.external.SourceModel`'s attributes:
    ``num_classes`` C + 1 (background included), ``embedding_dim`` the box head's width,
    ``stage_info`` the FPN levels, ``get_classifier()`` the RoI classifier ``cls_score``."""


@dataclass
class RoIs:
    """The RoIs a training step samples and the detector's rows for them.

    ``proposals``: per image ``[R_i, 4]`` boxes (x1, y1, x2, y2 in the ``ImageList``'s pixels);
    ``labels``: ``[R]`` the class each was assigned (0: background), images in order;
    ``output``: ``logits`` ``[R, C + 1]``, ``embedding`` ``[R, D]`` (box-head features),
    ``stages`` the FPN maps, ``heads[BOX_REGRESSION]`` ``[R, 4 (C + 1)]``.
    """

    proposals: list[torch.Tensor]
    labels: torch.Tensor
    output: ModelOutput


def detector_names() -> list[str]:
    """The names :func:`create_detector` builds."""
    return [f"{PREFIX}{backbone}{SUFFIX}" for backbone in BACKBONES]


def create_detector(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = False,
    **options: Any,
) -> DetectorModel:
    """Faster R-CNN ``name`` (``fasterrcnn_<backbone>_fpn``) with ``num_classes`` = C + 1
    RoI classes (background included); see the module documentation.

    ``options``: ``FasterRCNN``'s numeric RPN and RoI-head settings (``rpn_*``, ``box_*``,
    e.g. ``box_batch_size_per_image``, ``box_detections_per_img``).

    Raises:
        ValueError: unknown name, fewer than two classes, ``in_channels`` other than 3, an
            unknown option, ImageNet weights that cannot be fetched (one line).
    """
    backbone = name.removeprefix(PREFIX).removesuffix(SUFFIX)
    if f"{PREFIX}{backbone}{SUFFIX}" != name or backbone not in BACKBONES:
        raise ValueError(f"unknown detector {name!r}; available: {', '.join(detector_names())}")
    if num_classes < 2:
        raise ValueError(
            f"{name}: num_classes counts the background; expected >= 2, got {num_classes}"
        )
    if in_channels != 3:
        raise ValueError(f"{name}: detectors take RGB images (in_channels 3), got {in_channels}")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(
            f"{name}: unknown option {unknown[0]!r}; detectors take {', '.join(_OPTIONS)}"
        )
    build = _resnet_fpn if backbone in RESNETS else _features_fpn
    model = FasterRCNN(build(backbone, pretrained, name), num_classes=num_classes, **options)
    stages = [StageInfo(FPN_CHANNELS, stride) for stride in FPN_STRIDES]
    return adopt(model, DetectorModel, CLASSIFIER, stages)


def backbone_features(detector: FasterRCNN, images: ImageList) -> OrderedDict[str, torch.Tensor]:
    """The FPN maps of ``images`` (the task's normalised, padded batch), by level name."""
    features = detector.backbone(images.tensors)
    if isinstance(features, torch.Tensor):
        return OrderedDict([("0", features)])
    return features


def roi_outputs(
    detector: FasterRCNN,
    features: OrderedDict[str, torch.Tensor],
    proposals: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
) -> ModelOutput:
    """``detector``'s box head and predictor on ``proposals`` (per image, in the pixels of
    the images ``features`` come from), e.g. a teacher on the student's sampled RoIs: the
    rows of :class:`RoIs` (``stages``: the maps of ``features``)."""
    heads = detector.roi_heads
    pooled = heads.box_roi_pool(features, proposals, image_sizes)
    embedding = heads.box_head(pooled)
    logits, box_regression = heads.box_predictor(embedding)
    maps = list(features.values())
    return ModelOutput(logits, embedding, maps, maps, {BOX_REGRESSION: box_regression})


def training_rois(
    detector: FasterRCNN, images: ImageList, targets: list[dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], RoIs]:
    """One training forward of ``detector`` as torchvision's: backbone, RPN (its training
    proposals and loss), ``roi_heads.select_training_samples`` (the ground truth added to the
    proposals, then the sampler), box head and predictor, ``fastrcnn_loss``.

    ``targets``: per image ``"boxes"`` ``[K, 4]`` in ``images``' pixels and ``"labels"``
    ``[K]`` in 1..C. Returns torchvision's losses (``loss_objectness``, ``loss_rpn_box_reg``,
    ``loss_classifier``, ``loss_box_reg``) and the sampled :class:`RoIs`.

    Raises:
        ValueError: the RPN is in eval mode (a detector in training mode, or inside
            :func:`training_sampling`, samples as in training).
    """
    if not detector.rpn.training:
        raise ValueError("training_rois needs the RPN in training mode (see training_sampling)")
    features = backbone_features(detector, images)
    proposals, losses = detector.rpn(images, features, targets)
    sampled = detector.roi_heads.select_training_samples(proposals, targets)
    proposals, _, labels, regression_targets = sampled
    output = roi_outputs(detector, features, proposals, images.image_sizes)
    classifier, box = fastrcnn_loss(
        output.logits, output.heads[BOX_REGRESSION], labels, regression_targets
    )
    losses = {**losses, "loss_classifier": classifier, "loss_box_reg": box}
    return losses, RoIs(proposals, torch.cat(labels), output)


def detect(detector: FasterRCNN, images: ImageList) -> list[dict[str, torch.Tensor]]:
    """torchvision's inference path (``detector`` in eval mode): per image ``"boxes"``
    ``[N, 4]`` (in ``images``' pixels, before any resizing back), ``"scores"``, ``"labels"``.

    Raises:
        ValueError: ``detector`` is in training mode.
    """
    if detector.training:
        raise ValueError("detect needs a detector in eval mode (detector.eval())")
    features = backbone_features(detector, images)
    proposals, _ = detector.rpn(images, features)
    detections, _ = detector.roi_heads(features, proposals, images.image_sizes)
    return detections


@contextlib.contextmanager
def training_sampling(detector: FasterRCNN) -> Iterator[None]:
    """For the ``with`` body, ``detector`` in eval mode (BatchNorm statistics untouched)
    except its RPN, which proposes as in training (``rpn_post_nms_top_n_train`` boxes per
    image after NMS, and its loss): what :func:`training_rois` needs to sample a frozen
    model's RoIs. The modes are restored after."""
    was_training = detector.training
    detector.eval()
    detector.rpn.train()
    try:
        yield
    finally:
        detector.train(was_training)


def _resnet_fpn(arch: str, pretrained: bool, label: str) -> BackboneWithFPN:
    norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    trunk = _imagenet_model(arch, pretrained, label, norm_layer=norm)
    return _resnet_fpn_extractor(trunk, TRAINABLE_STAGES if pretrained else BACKBONE_STAGES)


def _features_fpn(arch: str, pretrained: bool, label: str) -> BackboneWithFPN:
    """An FPN over the last map of each stride 4..32 of a ``features`` sequence (module
    documentation), frozen below stride 8 (MobileNetV2) or 4 (VGG) on pretrained weights."""
    is_vgg = arch.startswith("vgg")
    norm = {} if is_vgg else {"norm_layer": FrozenBatchNorm2d if pretrained else nn.BatchNorm2d}
    features = _imagenet_model(arch, pretrained, label, **norm).features
    shapes = _output_shapes(features)
    strides = [_PROBE_SIZE // width for _, width in shapes]
    returned = [max(i for i, s in enumerate(strides) if s == stride) for stride in FPN_STRIDES[:4]]
    if pretrained:
        frozen = strides.index(4 if is_vgg else 8)
        features[:frozen].requires_grad_(False)
    return BackboneWithFPN(
        features,
        {str(index): str(level) for level, index in enumerate(returned)},
        [shapes[index][0] for index in returned],
        FPN_CHANNELS,
    )


def _output_shapes(features: nn.Sequential) -> list[tuple[int, int]]:
    """``(channels, width)`` of each module's output on a square probe image."""
    shapes = []
    was_training = features.training
    features.eval()
    x = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)
    with torch.no_grad():
        for module in features:
            x = module(x)
            shapes.append((x.shape[1], x.shape[-1]))
    features.train(was_training)
    return shapes


def _imagenet_model(arch: str, pretrained: bool, label: str, **kwargs: Any) -> nn.Module:
    """torchvision's classifier ``arch``, with its ImageNet weights when ``pretrained``
    (local cache first; without a route to the weights' host, one-line error)."""
    if not pretrained:
        return torchvision.models.get_model(arch, **kwargs)
    weights = torchvision.models.get_model_weights(arch)[_IMAGENET_WEIGHTS]
    if not weights_source.torch_hub_cached(weights.url):
        reason = weights_source.unreachable(weights.url)
        if reason is not None:
            raise weights_source.download_error(label, reason)
        log.info("%s: downloading the %s backbone weights from %s", label, arch, weights.url)
    return weights_source.fetch(
        label,
        lambda: torchvision.models.get_model(arch, weights=weights, progress=False, **kwargs),
    )
