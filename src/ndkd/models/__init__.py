"""Models under one output contract, from one factory, :func:`create_model`:

- plain names: the ndkd zoo, CIFAR architectures under the public CIFAR-100 checkpoints'
  parameter names (``list_models("cifar")``) and ``mobilenet_v1`` under the public ImageNet
  KD code's (``list_models("imagenet")``);
- ``"torchvision:NAME"``: any ``torchvision.models`` classifier, torchvision's keys;
- ``"timm:NAME"``: any timm model with a final ``nn.Linear``, timm's keys.

Every model returns :class:`ModelOutput` (logits, embedding, stages, pre-activation stages)
and describes its stages with :class:`StageInfo`.
"""

from ndkd.models.base import ZooModel
from ndkd.models.checkpoint import CheckpointMismatchError, extract_state_dict, load_checkpoint
from ndkd.models.external import SourceModel
from ndkd.models.output import ModelOutput, StageInfo
from ndkd.models.registry import create_model, list_models

__all__ = [
    "CheckpointMismatchError",
    "ModelOutput",
    "SourceModel",
    "StageInfo",
    "ZooModel",
    "create_model",
    "extract_state_dict",
    "list_models",
    "load_checkpoint",
]
