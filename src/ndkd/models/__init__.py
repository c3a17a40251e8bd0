"""Model zoo: CIFAR architectures under the public checkpoints' parameter names.

Every model returns :class:`ModelOutput` (logits, embedding, stages, pre-activation stages)
and describes its stages with :class:`StageInfo`.
"""

from ndkd.models.base import ZooModel
from ndkd.models.checkpoint import CheckpointMismatchError, extract_state_dict, load_checkpoint
from ndkd.models.output import ModelOutput, StageInfo
from ndkd.models.registry import create_model, list_models

__all__ = [
    "CheckpointMismatchError",
    "ModelOutput",
    "StageInfo",
    "ZooModel",
    "create_model",
    "extract_state_dict",
    "list_models",
    "load_checkpoint",
]
