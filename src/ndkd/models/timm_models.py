"""``timm:NAME``: any timm model with a final ``nn.Linear`` under the ndkd output contract.

One forward: ``forward_intermediates`` (the final features and the stage maps, NCHW) where
the model has it, else ``forward_features``; then ``forward_head(pre_logits=True)`` gives the
**embedding** (timm's "features before the final classifier") and the classifier
(``get_classifier()``, which must be an ``nn.Linear``) gives the **logits** from it.

**Stages** are the entries of the model's ``feature_info``: for CNNs one map per stage (timm
ResNets: ``act1`` at stride 2, the stem slot feature methods skip, then ``layer1`` ..
``layer4``). Isotropic models (every entry at one reduction, more than five entries: ViTs)
have no stride pyramid; ndkd takes five token maps, reshaped by timm to ``[B, C, H/p, W/p]``
(``p`` the patch size, the stride of all five): after the first block (the stem slot) and
after the last block of each quarter of the depth (blocks 3, 6, 9, 12 of 12). Models without
``forward_intermediates`` give no stages (feature methods then refuse them).
**Pre-activations** are not exposed by timm: ``preact_stages`` are the stage maps themselves
(post-activation), so OFD's margins and ReviewKD's teacher maps apply to post-ReLU maps.

Keyword options go to ``timm.create_model`` (e.g. ``img_size=32``, ``drop_path_rate``);
``in_channels`` becomes timm's ``in_chans``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ndkd.models import pretrained as weights_source
from ndkd.models.external import SourceModel, adopt, classifier_name_of
from ndkd.models.output import ModelOutput, StageInfo

log = logging.getLogger(__name__)

ISOTROPIC_STAGES = 5


class TimmModel(SourceModel):
    """Mixin of adapted timm models; see the module documentation."""

    _ndkd_indices: list[int] | None  # forward_intermediates indices, None: no stages
    _ndkd_dist_head: str | None  # the distillation head's name (distilled models only)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features, stages = self._features(x)
        embedding = self.forward_head(features, pre_logits=True)
        logits = self.get_classifier()(embedding)
        return ModelOutput(logits, embedding, stages, list(stages))

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The final features and the stage maps of one forward pass."""
        if self._ndkd_indices is None:
            return self.forward_features(x), []
        features, stages = self.forward_intermediates(
            x, indices=self._ndkd_indices, output_fmt="NCHW"
        )
        return features, list(stages)


class TimmDistilledModel(TimmModel):
    """A timm model with a distillation token and its own head (DeiT's
    ``deit_*_distilled_*``): the embedding is the mean of the class and distillation tokens
    (timm's ``forward_head(pre_logits=True)``), ``heads["dist_logits"]`` the distillation
    head's output; ``logits`` are the class head's in training and, in evaluation, the mean
    of both heads, as DeiT evaluates."""

    def forward(self, x: torch.Tensor) -> ModelOutput:
        features, stages = self._features(x)
        embedding = self.forward_head(features, pre_logits=True)
        logits = self.get_classifier()(self.head_drop(features[:, 0]))
        dist_head = self.get_submodule(self._ndkd_dist_head)
        dist_logits = dist_head(self.head_drop(features[:, 1]))
        if not self.training:
            logits = (logits + dist_logits) / 2
        return ModelOutput(logits, embedding, stages, list(stages), {"dist_logits": dist_logits})


def create_timm_model(
    arch: str, num_classes: int, in_channels: int, pretrained: bool, **options: Any
) -> TimmModel:
    """``timm.create_model(arch, ...)`` under the ndkd output contract.

    Raises:
        ValueError: unknown name, a classifier that is not an ``nn.Linear``, or pretrained
            weights that cannot be fetched.
    """
    import timm

    label = f"timm:{arch}"
    if not timm.is_model(arch):
        raise ValueError(
            f"unknown model {label!r}: not a timm model; list them with "
            "timm.list_models('pattern*') (timm.list_models(pretrained=True) for those with "
            "weights)"
        )

    def build() -> torch.nn.Module:
        return timm.create_model(
            arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **options
        )

    try:
        model = _build_pretrained(arch, label, build) if pretrained else build()
    except TypeError as error:  # an option the model does not take
        raise ValueError(f"{label}: {error}") from None
    getter = getattr(model, "get_classifier", None)
    classifier = getter() if callable(getter) else None
    mixin: type[TimmModel] = TimmModel
    dist_head = None
    if isinstance(classifier, tuple) and len(classifier) == 2:  # class + distillation heads
        classifier, mixin = classifier[0], TimmDistilledModel
        dist_head = classifier_name_of(model, getter()[1], label)
    name = classifier_name_of(model, classifier, label)
    indices, stage_info = _stages(model)
    adapted = adopt(model, mixin, name, stage_info)
    adapted._ndkd_dist_head = dist_head
    adapted._ndkd_indices = indices
    return adapted


def _build_pretrained(arch: str, label: str, build: Any) -> torch.nn.Module:
    """Cached weights first (no network), then a download if the host answers."""
    import timm

    config = timm.get_pretrained_cfg(arch)
    if config is None:
        raise ValueError(f"{label}: timm has no pretrained weights for this model")
    try:
        with weights_source.hub_offline():
            return weights_source.fetch(label, build, timeout=weights_source.CONNECT_TIMEOUT_S)
    except ValueError:
        pass  # not in the local caches
    url = weights_source.hub_endpoint() if config.hf_hub_id else (config.url or "")
    reason = weights_source.unreachable(url)
    if reason is not None:
        raise weights_source.download_error(label, reason)
    log.info("%s: downloading pretrained weights from %s", label, url)
    return weights_source.fetch(label, build)


def _stages(model: torch.nn.Module) -> tuple[list[int] | None, list[StageInfo]]:
    info = list(getattr(model, "feature_info", None) or [])
    if not info or not callable(getattr(model, "forward_intermediates", None)):
        log.info("%s: no forward_intermediates/feature_info, so no stages", type(model).__name__)
        return None, []
    indices = list(range(len(info)))
    if len(info) > ISOTROPIC_STAGES and len({entry["reduction"] for entry in info}) == 1:
        depth = len(info)
        indices = sorted({0, *(depth * k // 4 - 1 for k in range(1, 5))})
    return indices, [StageInfo(info[i]["num_chs"], info[i]["reduction"]) for i in indices]
