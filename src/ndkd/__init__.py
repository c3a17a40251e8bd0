"""ndkd: knowledge distillation with feature norm and direction regularization (ND loss).

Plug-in use in any training loop::

    from ndkd import class_means, kd_loss, nd_loss, with_embedding
    teacher, student = with_embedding(teacher), with_embedding(student)
    centers = class_means(teacher, train_loader, num_classes).means.to(device)
    s, t = student(x), teacher(x)  # teacher under torch.no_grad()
    loss = (ce(s.logits, y) + kd_loss(s.logits, t.logits, 4.0)
            + nd_loss(s.embedding, t.embedding, y, centers))
"""

from ndkd.centers import ClassMeans, class_means, load_official_json
from ndkd.losses import (
    cosine_direction_loss,
    infonce_direction_loss,
    kd_loss,
    l2_feature_loss,
    nd_loss,
    sifn_loss,
)
from ndkd.models.adapter import EmbeddingAdapter, with_embedding
from ndkd.models.output import ModelOutput
from ndkd.nd_module import NDLoss
from ndkd.projector import EmbeddingProjector
from ndkd.snapshot import ModelSnapshot

__version__ = "0.1.0"

__all__ = [
    "ClassMeans",
    "EmbeddingAdapter",
    "EmbeddingProjector",
    "ModelOutput",
    "ModelSnapshot",
    "NDLoss",
    "class_means",
    "cosine_direction_loss",
    "infonce_direction_loss",
    "kd_loss",
    "l2_feature_loss",
    "load_official_json",
    "nd_loss",
    "sifn_loss",
    "with_embedding",
]
