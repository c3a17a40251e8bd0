"""Multi-label recognition (VOC2007, COCO2014): images with a set of present classes, one
loss row per image, mAP and the thresholded CP/CR/CF1/OP/OR/OF1; class means are the
teacher's image embeddings averaged over the images where each class is present.

Targets are int8 ``[B, C]``: 1 present, 0 absent, -1 present only as "difficult" objects
(VOC). Training treats -1 as present; evaluation ignores the -1 pairs.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ndkd.centers import ClassMeans, class_means
from ndkd.collective import all_gather_rows
from ndkd.methods.base import FeatureSelector, StepOutputs
from ndkd.models.output import ModelOutput
from ndkd.progress import ProgressFn
from ndkd.tasks.base import Autocast
from ndkd.tasks.classification import ImageRows, fp32_output
from ndkd.tasks.ranking import AP_DEFINITIONS, average_precision, threshold_metrics

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Images ``[B, 3, H, W]``, int8 targets ``[B, C]`` (1 / 0 / -1 as in the module
    docstring) and, when a term asks for them, the samples' dataset indices ``[B]``."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor | None = None

    @property
    def present(self) -> torch.Tensor:
        """Boolean ``[B, C]``: the class is in the image ("difficult" ones included)."""
        return self.targets != 0


class MultiLabelMeter:
    """Training precision and recall (%, micro: pooled over images and classes) of the
    predictions ``sigmoid(logits) >= threshold``, and the mean embedding norms of student
    and teacher. A precision or recall with nothing to divide is 0."""

    def __init__(self, device: torch.device, with_teacher: bool, threshold: float) -> None:
        self.with_teacher = with_teacher
        self.threshold = threshold
        # images, correct, predicted, present, |s|, |t|
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(
        self, student_out: ModelOutput, teacher_out: ModelOutput | None, batch: Batch
    ) -> None:
        predicted = torch.sigmoid(student_out.logits.detach().float()) >= self.threshold
        present = batch.present
        counts = torch.stack([(predicted & present).sum(), predicted.sum(), present.sum()])
        self.sums[0] += batch.targets.shape[0]
        self.sums[1:4] += counts.to(self.sums.dtype)
        self.sums[4] += torch.linalg.vector_norm(student_out.embedding.float(), dim=1).sum()
        if teacher_out is not None:
            self.sums[5] += torch.linalg.vector_norm(teacher_out.embedding.float(), dim=1).sum()

    def totals(self) -> torch.Tensor:
        return self.sums

    def summarize(self, totals: list[float]) -> dict[str, float]:
        n, correct, predicted, present, s_norm, t_norm = totals
        record = {
            "train_precision": 100.0 * correct / max(predicted, 1.0),
            "train_recall": 100.0 * correct / max(present, 1.0),
            "student_emb_norm": s_norm / n,
        }
        if self.with_teacher:
            record["teacher_emb_norm"] = t_norm / n
        return record


class MultiLabelTask(ImageRows):
    """The multi-label task: ``best.pt`` by test mAP.

    Args:
        classes: the class names, in target column order (they name the per-class keys).
        ap_definition: the AP of ``test_map`` and ``test_ap/<class>``, one of
            :data:`~ndkd.tasks.ranking.AP_DEFINITIONS` (``"interpolated"``: VOC's, ``"plain"``:
            COCO's; every definition is also reported as ``test_map_<definition>``).
        threshold: the sigmoid score from which a class counts as predicted (CP ... OF1 and
            the training precision/recall).
    """

    primary_metric = "test_map"

    def __init__(
        self, classes: list[str], ap_definition: str = "plain", threshold: float = 0.5
    ) -> None:
        if not classes:
            raise ValueError("multilabel: classes must name at least one class")
        repeated = sorted(name for name, n in Counter(classes).items() if n > 1)
        if repeated:
            raise ValueError(f"multilabel: class names must be unique; repeated: {repeated}")
        if ap_definition not in AP_DEFINITIONS:
            raise ValueError(
                f"multilabel: unknown ap_definition {ap_definition!r}; "
                f"available: {', '.join(AP_DEFINITIONS)}"
            )
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"multilabel: threshold must lie in (0, 1), found {threshold}")
        self.classes = list(classes)
        self.ap_definition = ap_definition
        self.threshold = threshold

    def to_device(
        self,
        batch: tuple,
        device: torch.device,
        memory_format: torch.memory_format | None,
        train: bool = False,
    ) -> Batch:
        """The loader's ``(images, targets[, indices])`` on ``device`` (``train`` changes
        nothing: multi-label batches are not mixed)."""
        images, targets, *extra = batch
        images = images.to(device, non_blocking=True)
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        indices = extra[0].to(device, non_blocking=True) if extra else None
        return Batch(images, targets, indices)

    def step_losses(
        self,
        method: nn.Module,
        student_out: ModelOutput,
        teacher_out: ModelOutput | None,
        batch: Batch,
        epoch: int,
    ) -> dict[str, torch.Tensor]:
        """One row per image; the terms see float32 outputs and float32 multi-hot labels
        ``[B, C]`` (the BCE is a term here)."""
        rows = StepOutputs(
            fp32_output(student_out),
            fp32_output(teacher_out),
            batch.present.float(),
            batch.images,
            batch.indices,
        )
        return method(rows, epoch)

    def train_meter(self, device: torch.device, with_teacher: bool) -> MultiLabelMeter:
        return MultiLabelMeter(device, with_teacher, self.threshold)

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable,
        device: torch.device,
        autocast: Autocast,
        memory_format: torch.memory_format | None = None,
    ) -> dict[str, float]:
        """:meth:`metrics` of ``model``'s sigmoid scores (float32) over ``loader``, with the
        rows of every process gathered."""
        model.eval()
        scores, targets = [], []
        for raw in loader:
            batch = self.to_device(raw, device, memory_format)
            with autocast():
                logits = self.forward(model, batch).logits
            scores.append(torch.sigmoid(logits.float()))
            targets.append(batch.targets)
        width = len(self.classes)
        if not scores:  # this process's share is empty; the others may not be
            scores.append(torch.zeros(0, width, device=device))
            targets.append(torch.zeros(0, width, dtype=torch.int8, device=device))
        return self.metrics(all_gather_rows(torch.cat(scores)), all_gather_rows(torch.cat(targets)))

    def metrics(self, scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """The evaluation record (values in %) of ``[N, C]`` scores against targets
        (computed on the CPU in float64; the -1 targets are ignored):

        - ``test_map``: mean AP over the classes with a positive, AP by ``ap_definition``;
          ``test_map_interpolated`` / ``test_map_plain`` / ``test_map_11point``: by each
          definition (:func:`~ndkd.tasks.ranking.average_precision`).
        - ``test_cp``, ``test_cr``, ``test_cf1``, ``test_op``, ``test_or``, ``test_of1`` at
          ``threshold`` (:func:`~ndkd.tasks.ranking.threshold_metrics`).
        - ``test_ap/<class>``: each class's AP by ``ap_definition`` (NaN without positives).
        - ``test_samples``: N.

        Raises:
            ValueError: no rows, or a column count other than the number of classes.
        """
        if scores.shape[0] == 0:
            raise ValueError("the evaluation split yielded no samples")
        if scores.shape[1] != len(self.classes):
            raise ValueError(
                f"the model predicts {scores.shape[1]} classes but the task has {len(self.classes)}"
            )
        scores, targets = scores.detach().double().cpu(), targets.cpu()
        present, ignore = targets > 0, targets < 0
        ap = {name: average_precision(scores, present, ignore, name) for name in AP_DEFINITIONS}
        primary = ap[self.ap_definition]
        record: dict[str, float] = {"test_map": 100.0 * float(primary.nanmean())}
        record.update({f"test_map_{name}": 100.0 * float(v.nanmean()) for name, v in ap.items()})
        counts = threshold_metrics(scores, present, ignore, self.threshold)
        record.update({f"test_{name}": 100.0 * float(value) for name, value in counts.items()})
        record.update(
            {f"test_ap/{name}": 100.0 * v for name, v in zip(self.classes, primary.tolist())}
        )
        record["test_samples"] = int(scores.shape[0])
        return record

    def class_means(
        self,
        teacher: nn.Module,
        loader: Iterable,
        num_classes: int,
        device: torch.device,
        *,
        metadata: Mapping[str, str] | None = None,
        autocast_dtype: torch.dtype | None = None,
        progress: ProgressFn | None = None,
        feature: FeatureSelector | None = None,
    ) -> ClassMeans:
        """The teacher's embedding (or ``feature(output)``) averaged per class over the
        images where the class is present (targets != 0; an image counts once for each of
        its classes), summed over processes: :func:`ndkd.centers.class_means` with
        multi-label membership and the same options (``counts`` are images per class,
        ``num_samples`` in the metadata their sum, the image-class pairs)."""
        return class_means(
            teacher,
            loader,
            num_classes,
            device,
            metadata=metadata,
            autocast_dtype=autocast_dtype,
            progress=progress,
            feature=feature,
            membership=lambda targets: targets.ne(0),
        )
