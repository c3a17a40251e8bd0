"""Streaming computation of teacher class means (sums and counts on device, all-reduced)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from ndkd.centers.store import ClassMeans
from ndkd.checks import check_labels
from ndkd.models.adapter import with_embedding
from ndkd.models.output import ModelOutput
from ndkd.progress import Progress, ProgressFn

log = logging.getLogger(__name__)


def class_means(
    model: nn.Module,
    loader: Iterable,
    num_classes: int,
    device: torch.device | str | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: ProgressFn | None = None,
    feature: Callable[[ModelOutput], torch.Tensor] | None = None,
    membership: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> ClassMeans:
    """Per-class mean of the teacher's embedding over ``loader`` (the paper's ``c_k``).

    The model runs in eval mode under ``torch.inference_mode`` (its mode is restored after).
    Its embedding is the ``embedding`` of an ndkd model's output; for any other classifier
    it is the input of its final ``nn.Linear``, captured by :class:`EmbeddingAdapter`.
    Per-class sums (float64 where the device supports it) and counts accumulate on the
    device with ``index_add_``; when ``torch.distributed`` is initialised they are
    all-reduced, so every process returns the means over the union of its shards (a sampler
    that pads shards counts the padded samples twice: use an unpadded split for exact means).

    Args:
        model: the teacher. Moved to ``device`` when one is given.
        loader: yields ``(images, labels, ...)`` batches.
        num_classes: C; labels must lie in ``[0, C)``.
        device: where to run; default the model's parameter device.
        metadata: facts to record (teacher, dataset, split, transform).
        autocast_dtype: run the forward under autocast in this dtype (e.g. ``torch.bfloat16``
            on a GPU); the accumulation stays in full precision.
        progress: called after each batch with ``Progress(phase="centers", done=batches_done,
            total=total_batches)`` (``total`` is ``None`` for a loader without a length).
        feature: which feature to average, from the model's output (default: its
            ``embedding``); e.g. a pooled intermediate stage. Must be ``[B, D]``.
        membership: for multi-label targets, maps a batch's ``[B, C]`` targets to 0/1
            class membership; a sample then counts once for each of its classes (sums
            ``M^T @ features``). Default: one class index per sample.

    Raises:
        ValueError: a label outside ``[0, C)``, a class with no samples, non-finite or
            all-zero means, an empty loader.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, found {num_classes}")
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    embed = with_embedding(model)
    total = _length(loader)
    acc_dtype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for step, batch in enumerate(loader, start=1):
                images, labels = batch[0], batch[1]
                _check_targets(labels, num_classes, membership is not None)
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(
                    device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
                ):
                    output = embed(images)
                    emb = output.embedding if feature is None else feature(output)
                if sums is None:
                    sums = torch.zeros(num_classes, emb.shape[1], dtype=acc_dtype, device=device)
                if membership is None:
                    sums.index_add_(0, labels.long(), emb.to(acc_dtype))
                    counts.index_add_(0, labels.long(), torch.ones_like(labels, dtype=torch.long))
                else:
                    members = membership(labels).to(acc_dtype)
                    sums += members.T @ emb.to(acc_dtype)
                    counts += members.sum(dim=0).round().long()
                if progress is not None:
                    progress(Progress(phase="centers", done=step, total=total))
    finally:
        model.train(was_training)
    if sums is None:
        raise ValueError("the loader yielded no batches; cannot compute class means")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    means = (sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)).float().cpu()
    info = {
        "num_classes": str(num_classes),
        "feature_dim": str(means.shape[1]),
        "num_samples": str(int(counts.sum())),
        **dict(metadata or {}),
    }
    result = ClassMeans(means, counts.cpu(), info).validate("class_means")
    log.info(
        "class means: %d classes, dim %d, %s samples",
        num_classes,
        means.shape[1],
        info["num_samples"],
    )
    return result


def _check_targets(labels: torch.Tensor, num_classes: int, multi_label: bool) -> None:
    if not multi_label:
        check_labels(labels, labels.shape[0], num_classes)
    elif labels.dim() != 2 or labels.shape[1] != num_classes:
        raise ValueError(
            f"multi-label targets must be [batch, {num_classes}], found {tuple(labels.shape)}"
        )


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
