"""Faster R-CNN and RetinaNet detectors (torchvision's ``FasterRCNN`` and ``RetinaNet`` on
shared FPN backbones) and the pieces of their forward that distillation needs.

Names: ``fasterrcnn_<backbone>_fpn`` and ``retinanet_<backbone>_fpn`` (:func:`detector_names`),
built by :func:`create_detector` with torchvision's parameter names (``backbone.body.*``,
``backbone.fpn.*``; ``rpn.*``, ``roi_heads.*``; ``anchor_generator``, ``head.*``), so
torchvision's state dicts of ``fasterrcnn_resnet50_fpn`` and ``retinanet_resnet50_fpn`` load
strictly into the ndkd models of those names with 91 classes. Every FPN has 256 channels.

- Faster R-CNN: FPN on the backbone's strides 4, 8, 16, 32 plus the max-pooled level at 64
  (``"0"``..``"3"``, ``"pool"``); the RPN, RoI heads and their defaults are torchvision's (RoI
  sampler: 512 proposals per image, a quarter positive at most; box head: ``TwoMLPHead``,
  1024-d). Its rows (:class:`RoIs`): sampled RoIs through the box head.
- RetinaNet: FPN on strides 8, 16, 32 plus P6, P7 from P5 (``LastLevelP6P7``; strides 64,
  128), 9 anchors per position, torchvision's heads and defaults (``retinanet_resnet50_fpn``'s
  layout). Its rows (:class:`Positions`), as LSHFM's RetinaNet distillation: feature-map
  positions, the 3 x 3 patch of the classification tower's output at each (256 x 9 = 2304-d,
  the input of the 3 x 3 ``cls_logits`` convolution there).

Backbones, shared by both kinds (the maps each kind takes are the last of each of its strides):

- ``resnet18`` .. ``resnet152``: ``layer1``..``layer4`` (strides 4..32; torchvision's
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
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    LastLevelMaxPool,
    LastLevelP6P7,
)
from torchvision.ops.misc import FrozenBatchNorm2d

from ndkd.models import pretrained as weights_source
from ndkd.models.external import SourceModel, adopt
from ndkd.models.output import ModelOutput, StageInfo

log = logging.getLogger(__name__)

SUFFIX = "_fpn"
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BACKBONES = (*RESNETS, "mobilenet_v2", "vgg11", "vgg16")
FPN_CHANNELS = 256
CLASSIFIER = "roi_heads.box_predictor.cls_score"
RETINANET_CLASSIFIER = "head.classification_head.cls_logits"
BOX_REGRESSION = "box_regression"
"""The ``ModelOutput.heads`` key of the RoI box regression ``[R, 4 (C + 1)]``."""
IGNORED = -1
"""The class of a RetinaNet anchor between the matcher's IoU thresholds (in no loss)."""
BACKBONE_STAGES, TRAINABLE_STAGES = 5, 3
"""A backbone's stages, and how many train on pretrained weights (torchvision's default)."""
_IMAGENET_WEIGHTS = "IMAGENET1K_V1"
_PROBE_SIZE = 64
_TRANSFORM_OPTIONS = ("min_size", "max_size")


@dataclass(frozen=True)
class _Kind:
    """A detector family on the shared FPN backbones: its torchvision class, the backbone
    strides its FPN takes, the FPN's extra levels (block and strides), its classifier."""

    detector: type[nn.Module]
    strides: tuple[int, ...]
    extra_blocks: Callable[[], ExtraFPNBlock]
    extra_strides: tuple[int, ...]
    classifier: str

    @property
    def options(self) -> tuple[str, ...]:
        """The class's numeric settings (e.g. ``rpn_post_nms_top_n_train``,
        ``box_batch_size_per_image``; ``score_thresh``, ``topk_candidates``), its transform's
        sizes excepted: the options :func:`create_detector` takes."""
        parameters = inspect.signature(self.detector.__init__).parameters.items()
        return tuple(
            name
            for name, parameter in parameters
            if isinstance(parameter.default, (int, float)) and name not in _TRANSFORM_OPTIONS
        )


_KINDS = {
    "fasterrcnn_": _Kind(FasterRCNN, (4, 8, 16, 32), LastLevelMaxPool, (64,), CLASSIFIER),
    "retinanet_": _Kind(
        RetinaNet,
        (8, 16, 32),
        partial(LastLevelP6P7, FPN_CHANNELS, FPN_CHANNELS),
        (64, 128),
        RETINANET_CLASSIFIER,
    ),
}


class DetectorModel(SourceModel):
    """Mixin of ndkd's detectors: torchvision's ``FasterRCNN`` or ``RetinaNet`` (its modules,
    keys and own ``forward``) with :class:`~ndkd.models.external.SourceModel`'s attributes:
    ``num_classes`` the width of a row's logits (Faster R-CNN: C + 1, background included;
    RetinaNet: A (C + 1), A anchors per position), ``embedding_dim`` the rows' width (1024;
    2304), ``stage_info`` the FPN levels, ``classifier_name`` the classifier of the rows
    (``cls_score``, which ``get_classifier()`` returns; RetinaNet's ``cls_logits`` is a
    :class:`PatchClassifier`, not an ``nn.Linear``, so ``get_classifier()`` refuses it)."""


class PatchClassifier(nn.Conv2d):
    """RetinaNet's ``cls_logits`` convolution seen as a linear classifier of each position's
    k x k patch: ``in_features`` = channels x k^2 (a row's embedding), ``out_features`` = its
    output channels, A anchors x K classes (a row's logits)."""

    @property
    def in_features(self) -> int:
        return self.in_channels * math.prod(self.kernel_size)

    @property
    def out_features(self) -> int:
        return self.out_channels


@dataclass
class RoIs:
    """Faster R-CNN's rows: the RoIs a training step samples and the detector's rows for them.

    ``proposals``: per image ``[R_i, 4]`` boxes (x1, y1, x2, y2 in the ``ImageList``'s pixels);
    ``labels``: ``[R]`` the class each was assigned (0: background), images in order;
    ``output``: ``logits`` ``[R, C + 1]``, ``embedding`` ``[R, D]`` (box-head features),
    ``stages`` the FPN maps, ``heads[BOX_REGRESSION]`` ``[R, 4 (C + 1)]``.
    """

    proposals: list[torch.Tensor]
    labels: torch.Tensor
    output: ModelOutput
    has_classes: ClassVar[bool] = True
    """One class per row (``labels`` ``[R]``)."""

    def outputs_of(
        self,
        detector: nn.Module,
        features: OrderedDict[str, torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> ModelOutput:
        """``detector``'s rows for the same RoIs (e.g. a teacher's, on its own FPN maps)."""
        _require(detector, FasterRCNN)
        return roi_outputs(detector, features, self.proposals, image_sizes)


@dataclass
class Positions:
    """RetinaNet's rows, as LSHFM's RetinaNet distillation: the feature-map positions of
    every FPN level (images, then levels, then positions in raster order) where at least one
    of the A anchors is foreground or background (not every one between the matcher's IoU
    thresholds).

    ``mask``: ``[N, P]`` the rows among each image's P positions; ``labels``: ``[rows, A]``
    the class each anchor there was assigned (its box's, 0: background, :data:`IGNORED`:
    between the thresholds), no class per row; ``output``: ``embedding`` ``[rows, 9 c]`` the
    3 x 3 patch of the classification tower's output (c = 256 channels, channel-major as
    ``F.unfold``), ``logits`` ``[rows, A K]`` the ``cls_logits`` there, anchor-major (torchvision's
    order; each K sigmoid logits), ``stages`` the FPN maps.
    """

    mask: torch.Tensor
    labels: torch.Tensor
    output: ModelOutput
    has_classes: ClassVar[bool] = False
    """No class per row (``labels`` ``[rows, A]``, one per anchor)."""

    def outputs_of(
        self,
        detector: nn.Module,
        features: OrderedDict[str, torch.Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> ModelOutput:
        """``detector``'s rows at the same positions (e.g. a teacher's, on its own FPN maps)."""
        _require(detector, RetinaNet)
        return position_outputs(detector, features, self.mask)


Rows = RoIs | Positions


def detector_names() -> list[str]:
    """The names :func:`create_detector` builds."""
    return [f"{prefix}{backbone}{SUFFIX}" for prefix in _KINDS for backbone in BACKBONES]


def create_detector(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = False,
    **options: Any,
) -> DetectorModel:
    """Faster R-CNN or RetinaNet ``name`` (``fasterrcnn_<backbone>_fpn``,
    ``retinanet_<backbone>_fpn``) with ``num_classes`` = C + 1 classes (background included;
    RetinaNet, as torchvision's on COCO, keeps a logit for class 0, which no anchor is
    assigned); see the module documentation.

    ``options``: the class's numeric settings (Faster R-CNN: ``rpn_*``, ``box_*``, e.g.
    ``box_batch_size_per_image``; RetinaNet: ``score_thresh``, ``nms_thresh``,
    ``detections_per_img``, ``fg_iou_thresh``, ``bg_iou_thresh``, ``topk_candidates``).

    Raises:
        ValueError: unknown name, fewer than two classes, ``in_channels`` other than 3, an
            unknown option, ImageNet weights that cannot be fetched (one line).
    """
    prefix, backbone = _parse(name)
    if num_classes < 2:
        raise ValueError(
            f"{name}: num_classes counts the background; expected >= 2, got {num_classes}"
        )
    if in_channels != 3:
        raise ValueError(f"{name}: detectors take RGB images (in_channels 3), got {in_channels}")
    kind = _KINDS[prefix]
    unknown = sorted(set(options) - set(kind.options))
    if unknown:
        raise ValueError(
            f"{name}: unknown option {unknown[0]!r}; these detectors take {', '.join(kind.options)}"
        )
    build = _resnet_fpn if backbone in RESNETS else _features_fpn
    model = kind.detector(build(backbone, pretrained, name, kind), num_classes, **options)
    classifier = model.get_submodule(kind.classifier)
    if isinstance(classifier, nn.Conv2d):
        classifier.__class__ = PatchClassifier
    stages = [StageInfo(FPN_CHANNELS, stride) for stride in kind.strides + kind.extra_strides]
    return adopt(model, DetectorModel, kind.classifier, stages)


def row_type(detector: nn.Module) -> type[RoIs] | type[Positions]:
    """The rows ``detector`` yields: :class:`Positions` for a RetinaNet, else :class:`RoIs`."""
    return Positions if isinstance(detector, RetinaNet) else RoIs


def backbone_features(detector: nn.Module, images: ImageList) -> OrderedDict[str, torch.Tensor]:
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


def position_outputs(
    detector: RetinaNet, features: OrderedDict[str, torch.Tensor], mask: torch.Tensor
) -> ModelOutput:
    """``detector``'s classification subnet on ``features`` at the positions of ``mask``
    (``[N, P]``, e.g. the student's rows for a teacher): the rows of :class:`Positions`.

    Raises:
        ValueError: ``features`` do not have ``mask``'s P positions per image (another FPN).
    """
    maps = list(features.values())
    patches, logits = _classification(detector, maps)
    if patches.shape[:2] != mask.shape:
        raise ValueError(
            f"detection: the rows index {mask.shape[1]} positions per image, but this "
            f"RetinaNet's FPN has {patches.shape[1]}; student and teacher need the same levels"
        )
    return ModelOutput(logits[mask], patches[mask], maps, maps)


def training_positions(
    detector: RetinaNet, images: ImageList, targets: list[dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], Positions]:
    """One training forward of ``detector`` as torchvision's: backbone, anchors matched to
    the boxes (IoU 0.5 / 0.4, low-quality matches kept), heads, focal and box losses; and
    its :class:`Positions` rows, the classification tower's patches where an anchor is
    foreground or background.

    ``targets`` as :func:`training_rois`'. Returns torchvision's losses
    (``classification``, ``bbox_regression``) and the rows.
    """
    maps = list(backbone_features(detector, images).values())
    anchors = detector.anchor_generator(images, maps)
    matched = [_match(detector, boxes, target) for boxes, target in zip(anchors, targets)]
    patches, logits = _classification(detector, maps)
    count, positions, _ = logits.shape
    head_outputs = {
        "cls_logits": logits.reshape(count, -1, detector.head.classification_head.num_classes),
        "bbox_regression": detector.head.regression_head(maps),
    }
    losses = detector.head.compute_loss(targets, head_outputs, anchors, matched)
    classes = [_anchor_classes(m, target["labels"]) for m, target in zip(matched, targets)]
    assigned = torch.stack(classes).view(count, positions, -1)
    mask = (assigned != IGNORED).any(dim=2)
    output = ModelOutput(logits[mask], patches[mask], maps, maps)
    return losses, Positions(mask, assigned[mask], output)


def training_rows(
    detector: nn.Module, images: ImageList, targets: list[dict[str, torch.Tensor]]
) -> tuple[dict[str, torch.Tensor], Rows]:
    """:func:`training_positions` of a RetinaNet, else :func:`training_rois`."""
    if isinstance(detector, RetinaNet):
        return training_positions(detector, images, targets)
    return training_rois(detector, images, targets)


def detect(detector: nn.Module, images: ImageList) -> list[dict[str, torch.Tensor]]:
    """torchvision's inference path (``detector`` in eval mode): per image ``"boxes"``
    ``[N, 4]`` (in ``images``' pixels, before any resizing back), ``"scores"``, ``"labels"``.

    Raises:
        ValueError: ``detector`` is in training mode.
    """
    if detector.training:
        raise ValueError("detect needs a detector in eval mode (detector.eval())")
    features = backbone_features(detector, images)
    if isinstance(detector, RetinaNet):
        return _retinanet_detections(detector, images, list(features.values()))
    proposals, _ = detector.rpn(images, features)
    detections, _ = detector.roi_heads(features, proposals, images.image_sizes)
    return detections


@contextlib.contextmanager
def training_sampling(detector: nn.Module) -> Iterator[None]:
    """For the ``with`` body, ``detector`` in eval mode (BatchNorm statistics untouched)
    except a Faster R-CNN's RPN, which proposes as in training (``rpn_post_nms_top_n_train``
    boxes per image after NMS, and its loss): what :func:`training_rows` needs to take a
    frozen model's rows (RetinaNet's need no training mode). The modes are restored after."""
    was_training = detector.training
    detector.eval()
    if isinstance(detector, FasterRCNN):
        detector.rpn.train()
    try:
        yield
    finally:
        detector.train(was_training)


def _classification(
    detector: RetinaNet, maps: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The classification subnet on every level: per image and position (levels in order)
    the k x k patch of its tower's output ``[N, P, c k^2]`` and ``cls_logits`` ``[N, P, A K]``."""
    head = detector.head.classification_head
    classifier = head.cls_logits
    patches, logits = [], []
    for level in maps:
        tower = head.conv(level)
        patch = F.unfold(tower, classifier.kernel_size, padding=classifier.padding)
        patches.append(patch.transpose(1, 2))
        logits.append(classifier(tower).flatten(2).transpose(1, 2))
    return torch.cat(patches, dim=1), torch.cat(logits, dim=1)


def _match(
    detector: RetinaNet, anchors: torch.Tensor, target: dict[str, torch.Tensor]
) -> torch.Tensor:
    """torchvision's anchor assignment of one image: each anchor's box index, or the
    matcher's negative codes (all background for an image without boxes)."""
    if target["boxes"].numel() == 0:
        return torch.full_like(anchors[:, 0], Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64)
    return detector.proposal_matcher(box_iou(target["boxes"], anchors))


def _anchor_classes(matched: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each anchor's class: its box's label, 0 below the background threshold,
    :data:`IGNORED` between the thresholds."""
    classes = F.pad(labels, (1, 0))[(matched + 1).clamp(min=0)]
    return classes.masked_fill(matched == Matcher.BETWEEN_THRESHOLDS, IGNORED)


def _retinanet_detections(
    detector: RetinaNet, images: ImageList, maps: list[torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """torchvision's RetinaNet inference after the backbone: heads, anchors, the outputs
    split per level, ``postprocess_detections``."""
    outputs = detector.head(maps)
    anchors = detector.anchor_generator(images, maps)
    per_position = detector.anchor_generator.num_anchors_per_location()[0]
    sizes = [level.shape[-2] * level.shape[-1] * per_position for level in maps]
    levels = {key: list(value.split(sizes, dim=1)) for key, value in outputs.items()}
    split_anchors = [list(boxes.split(sizes)) for boxes in anchors]
    return detector.postprocess_detections(levels, split_anchors, images.image_sizes)


def _require(detector: nn.Module, kind: type[nn.Module]) -> None:
    """Refuse another kind of detector than the one the rows came from."""
    if not isinstance(detector, kind):
        raise ValueError(
            f"detection: the rows come from a {kind.__name__}, but the other model is a "
            f"{type(detector).__name__}; student and teacher must be the same kind of detector"
        )


def _parse(name: str) -> tuple[str, str]:
    """``(kind prefix, backbone)`` of detector ``name``."""
    for prefix in _KINDS:
        backbone = name.removeprefix(prefix).removesuffix(SUFFIX)
        if f"{prefix}{backbone}{SUFFIX}" == name and backbone in BACKBONES:
            return prefix, backbone
    raise ValueError(f"unknown detector {name!r}; available: {', '.join(detector_names())}")


def _resnet_fpn(arch: str, pretrained: bool, label: str, kind: _Kind) -> BackboneWithFPN:
    norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    trunk = _imagenet_model(arch, pretrained, label, norm_layer=norm)
    return _resnet_fpn_extractor(
        trunk,
        TRAINABLE_STAGES if pretrained else BACKBONE_STAGES,
        returned_layers=[stride.bit_length() - 2 for stride in kind.strides],  # 4: layer1
        extra_blocks=kind.extra_blocks(),
    )


def _features_fpn(arch: str, pretrained: bool, label: str, kind: _Kind) -> BackboneWithFPN:
    """An FPN over the last map of each of ``kind``'s strides of a ``features`` sequence
    (module documentation), frozen below stride 8 (MobileNetV2) or 4 (VGG) on pretrained
    weights."""
    is_vgg = arch.startswith("vgg")
    norm = {} if is_vgg else {"norm_layer": FrozenBatchNorm2d if pretrained else nn.BatchNorm2d}
    features = _imagenet_model(arch, pretrained, label, **norm).features
    shapes = _output_shapes(features)
    strides = [_PROBE_SIZE // width for _, width in shapes]
    returned = [max(i for i, s in enumerate(strides) if s == stride) for stride in kind.strides]
    if pretrained:
        frozen = strides.index(4 if is_vgg else 8)
        features[:frozen].requires_grad_(False)
    return BackboneWithFPN(
        features,
        {str(index): str(level) for level, index in enumerate(returned)},
        [shapes[index][0] for index in returned],
        FPN_CHANNELS,
        extra_blocks=kind.extra_blocks(),
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
