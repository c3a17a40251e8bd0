"""ndkd: knowledge distillation with feature norm and direction regularization (ND loss).

Plug-in use in any training loop::

    from ndkd import class_means, kd_loss, nd_loss, with_embedding
    teacher, student = with_embedding(teacher), with_embedding(student)
    centers = class_means(teacher, train_loader, num_classes).means.to(device)
    s, t = student(x), teacher(x)  # teacher under torch.no_grad()
    loss = (ce(s.logits, y) + kd_loss(s.logits, t.logits, 4.0)
            + nd_loss(s.embedding, t.embedding, y, centers))

The names below are imported on first use (PEP 562), so ``import ndkd`` (and the ``ndkd``
command's help) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ClassMeans": "ndkd.centers",
    "class_means": "ndkd.centers",
    "load_official_json": "ndkd.centers",
    "cosine_direction_loss": "ndkd.losses",
    "infonce_direction_loss": "ndkd.losses",
    "kd_loss": "ndkd.losses",
    "l2_feature_loss": "ndkd.losses",
    "nd_loss": "ndkd.losses",
    "sifn_loss": "ndkd.losses",
    "EmbeddingAdapter": "ndkd.models.adapter",
    "with_embedding": "ndkd.models.adapter",
    "ModelOutput": "ndkd.models.output",
    "NDLoss": "ndkd.nd_module",
    "EmbeddingProjector": "ndkd.projector",
    "ModelSnapshot": "ndkd.snapshot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ndkd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
