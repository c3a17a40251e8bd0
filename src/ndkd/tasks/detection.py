"""Object detection with torchvision's Faster R-CNN or RetinaNet (:mod:`ndkd.models.detection`):
the loss rows are RoIs or feature-map positions, so every term that reads ``StepOutputs``'
embeddings (and logits) distils detectors unchanged.

Faster R-CNN: a training step samples the student's RoIs as torchvision does (its RPN's
proposals plus the ground-truth boxes, 512 per image, a quarter positive at most) and runs
them through the student's box head and, under ``torch.no_grad()``, the teacher's: the rows
are those RoIs, ``embedding`` the box-head feature (1024-d), ``logits`` the ``C + 1`` RoI class
logits (background 0), ``labels`` each RoI's assigned class (0: background). Its losses are
added unweighted as ``det_objectness``, ``det_rpn_box_reg``, ``det_classifier`` and
``det_box_reg``.

RetinaNet (as LSHFM's RetinaNet distillation): the rows are the positions of every FPN level
where at least one of the student's anchors is foreground or background
(:class:`~ndkd.models.detection.Positions`), ``embedding`` the 3 x 3 patch of the
classification tower's output there (2304-d) of the student and of the teacher at the same
positions, ``logits`` the A x K anchor logits there (sigmoid, anchor-major; a softmax term
such as ``kd`` would treat them as one distribution, which they are not), ``labels``
``[rows, A]`` each anchor's assigned class (0: background, -1: ignored). A row has no class,
so the terms that read one class label per row (``reads_class_labels``) and class means are
refused. Its losses: ``det_classification`` (focal) and ``det_bbox_regression``. LSHFM's code
averages its feature loss per image, then over images; here the terms average over all the
batch's rows.

Evaluation is COCO's AP (pycocotools) or VOC 2007's 11-point mAP
(:mod:`ndkd.tasks.voc_detection_map`).

Loader batches are ``(images, targets)``: tuples of ``float32`` ``[3, H, W]`` images in
[0, 1] (any size) and their targets (``"boxes"`` ``[K, 4]`` x1, y1, x2, y2 in pixels,
``"labels"`` ``[K]`` in 1..C, ``"image_id"``); the task resizes and normalises them with one
torchvision ``GeneralizedRCNNTransform`` for training (a shorter side drawn per image from
``train_sizes``) and one for evaluation (``test_size``), so student and teacher see the same
batch.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ndkd.centers import ClassMeans, class_means
from ndkd.collective import all_gather_rows, all_reduce_sum
from ndkd.methods.base import FeatureSelector, StepOutputs
from ndkd.models.detection import (
    Rows,
    backbone_features,
    detect,
    row_type,
    training_rows,
    training_sampling,
)
from ndkd.models.output import ModelOutput
from ndkd.progress import ProgressFn
from ndkd.tasks.base import Autocast
from ndkd.tasks.classification import fp32_output
from ndkd.tasks.voc_detection_map import voc07_average_precisions

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METRICS = ("coco", "voc07")
COCO_KEYS = (
    "test_ap",
    "test_ap50",
    "test_ap75",
    "test_ap_small",
    "test_ap_medium",
    "test_ap_large",
)
"""The evaluation keys of COCO's first six summary numbers (AP at IoU .5:.95, .5, .75; AP of
small, medium, large objects), in %."""
_FLOAT32_INTEGERS = 2**24
Target = dict[str, torch.Tensor]


@dataclass
class Batch:
    """A batch on the device: the normalised, resized, padded ``images``, the ``targets``
    with their boxes in those pixels, and each image's size before resizing ``(H, W)``."""

    images: ImageList
    targets: list[Target]
    original_sizes: list[tuple[int, int]]

    @property
    def image_ids(self) -> torch.Tensor:
        return torch.stack([target["image_id"] for target in self.targets])


@dataclass
class StudentRows:
    """The student's forward: its detector ``losses`` (torchvision's names), its rows
    (:class:`~ndkd.models.detection.RoIs` or :class:`~ndkd.models.detection.Positions`), and
    once :meth:`DetectionTask.step_losses` ran with a teacher, the teacher's rows for them."""

    losses: dict[str, torch.Tensor]
    rows: Rows
    teacher: ModelOutput | None = None


@dataclass
class TeacherFeatures:
    """The frozen teacher's forward: its FPN maps of the batch, and the model, whose box
    head (classification subnet) :meth:`DetectionTask.step_losses` runs on the student's
    RoIs (positions)."""

    model: nn.Module
    features: OrderedDict[str, torch.Tensor]


class RowMeter:
    """The mean row embedding norms of student and teacher and, for RoI rows, the student's
    training RoI classification accuracy (% of its sampled RoIs, the background ones
    included; absent for RetinaNet's rows, which have no class)."""

    def __init__(self, device: torch.device, with_teacher: bool) -> None:
        self.with_teacher = with_teacher
        # images, rows, rows with a class, correctly classified rows, |s|, |t|
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(
        self, student_out: StudentRows, teacher_out: TeacherFeatures | None, batch: Batch
    ) -> None:
        rows = student_out.rows
        output = rows.output
        self.sums[0] += len(batch.images.image_sizes)
        self.sums[1] += output.embedding.shape[0]
        if rows.has_classes:
            self.sums[2] += rows.labels.shape[0]
            self.sums[3] += (output.logits.argmax(dim=1) == rows.labels).sum()
        self.sums[4] += torch.linalg.vector_norm(output.embedding.float(), dim=1).sum()
        if student_out.teacher is not None:
            teacher = student_out.teacher.embedding.float()
            self.sums[5] += torch.linalg.vector_norm(teacher, dim=1).sum()

    def totals(self) -> torch.Tensor:
        return self.sums

    def summarize(self, totals: list[float]) -> dict[str, float]:
        _, rows, classified, correct, s_norm, t_norm = totals
        rows = max(rows, 1.0)
        record = {"student_emb_norm": s_norm / rows}
        if classified:
            record["train_roi_accuracy"] = 100.0 * correct / classified
        if self.with_teacher:
            record["teacher_emb_norm"] = t_norm / rows
        return record


class DetectionTask:
    """The detection task (module documentation): ``best.pt`` by ``test_ap``.

    Args:
        classes: the class name of each label, ``classes[0]`` the background (as
            ``ndkd.data.detection.DetectionSplits.classes``); names the per-class AP keys.
        ground_truth: the evaluation split's ground truth in COCO's format (``images``,
            ``annotations`` with ``id``, ``image_id``, ``category_id``, ``bbox`` as x, y, w, h,
            ``area``, ``iscrowd``; ``categories``).
        category_ids: the ground truth's category id of each label (``category_ids[0]``
            unused).
        train_sizes: shorter sides of training images, one drawn per image.
        test_size: shorter side of evaluation images.
        max_size: cap of the longer side.
        metric: ``"coco"`` (``test_ap`` = COCO AP at IoU .5:.95) or ``"voc07"`` (``test_ap`` =
            VOC 2007 11-point mAP at IoU .5).
    """

    primary_metric = "test_ap"

    def __init__(
        self,
        classes: list[str],
        ground_truth: Mapping[str, Any],
        category_ids: list[int],
        train_sizes: list[int],
        test_size: int,
        max_size: int,
        metric: str = "coco",
    ) -> None:
        if len(classes) < 2 or len(classes) != len(category_ids):
            raise ValueError(
                "detection: classes (background first) and category_ids need one entry per "
                f"label and at least one object class; got {len(classes)} and "
                f"{len(category_ids)}"
            )
        if metric not in METRICS:
            raise ValueError(f"detection: unknown metric {metric!r}; available: {METRICS}")
        largest = max((image["id"] for image in ground_truth["images"]), default=0)
        if largest >= _FLOAT32_INTEGERS:
            raise ValueError(f"detection: image ids must be below 2^24, found {largest}")
        self.classes = list(classes)
        self.ground_truth = ground_truth
        self.category_ids = list(category_ids)
        self.metric = metric
        transform = dict(max_size=max_size, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
        self.train_transform = GeneralizedRCNNTransform(min_size=tuple(train_sizes), **transform)
        self.eval_transform = GeneralizedRCNNTransform(min_size=test_size, **transform).eval()

    def to_device(
        self,
        batch: tuple,
        device: torch.device,
        memory_format: torch.memory_format | None,
        train: bool = False,
    ) -> Batch:
        """The loader's ``(images, targets)`` on ``device``, resized and normalised by the
        training transform (``train``) or the evaluation one.

        Raises:
            ValueError: the batch carries dataset indices (a term with
                ``requires_indices``): they index images, not the RoI rows.
        """
        images, targets, *extra = batch
        if extra:
            raise ValueError(
                "detection: the loss rows are RoIs, not images; terms that need dataset "
                "indices (requires_indices) are not supported"
            )
        images = [image.to(device, non_blocking=True) for image in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        original_sizes = [(image.shape[-2], image.shape[-1]) for image in images]
        transform = self.train_transform if train else self.eval_transform
        image_list, targets = transform(images, targets)
        if memory_format is not None:
            tensors = image_list.tensors.contiguous(memory_format=memory_format)
            image_list = ImageList(tensors, image_list.image_sizes)
        return Batch(image_list, targets, original_sizes)

    def forward(self, model: nn.Module, batch: Batch) -> StudentRows | TeacherFeatures:
        """A model in training mode (the student): its training forward and rows; in eval
        mode (the frozen teacher): its FPN maps, for :meth:`step_losses`."""
        if model.training:
            return StudentRows(*training_rows(model, batch.images, batch.targets))
        return TeacherFeatures(model, backbone_features(model, batch.images))

    def step_losses(
        self,
        method: nn.Module,
        student_out: StudentRows,
        teacher_out: TeacherFeatures | None,
        batch: Batch,
        epoch: int,
    ) -> dict[str, torch.Tensor]:
        """The terms on the student's rows (float32; the teacher's rows for the same RoIs or
        positions, stored in ``student_out.teacher`` for the meter), plus the detector's
        losses as ``det_<name>`` (unweighted; torchvision's names without ``loss_``).

        Raises:
            ValueError: a term of ``method`` reads one class label per row and the rows
                have none (RetinaNet's).
        """
        rows = student_out.rows
        if not rows.has_classes:
            _refuse_class_readers(method)
        if teacher_out is not None:
            student_out.teacher = teacher_rows(teacher_out, rows, batch.images)
        outputs = StepOutputs(
            fp32_output(rows.output), fp32_output(student_out.teacher), rows.labels
        )
        losses = method(outputs, epoch)
        for name, value in student_out.losses.items():
            losses[f"det_{name.removeprefix('loss_')}"] = value
        return losses

    def train_meter(self, device: torch.device, with_teacher: bool) -> RowMeter:
        return RowMeter(device, with_teacher)

    def feature_rows(self, model: nn.Module, batch: Batch) -> ModelOutput:
        """``model``'s rows on ``batch``: its outputs on its own sampled RoIs (positions)."""
        return self.sampled_rows(model, batch).output

    def sampled_rows(self, model: nn.Module, batch: Batch) -> Rows:
        """``model``'s rows on its own sampled RoIs (RetinaNet: on the positions its own
        anchors select), without gradients and without touching its BatchNorm statistics
        (:func:`~ndkd.models.detection.training_sampling`)."""
        with torch.no_grad(), training_sampling(model):
            return training_rows(model, batch.images, batch.targets)[1]

    @torch.no_grad()
    def probe_rows(
        self, student: nn.Module, teacher: nn.Module | None, batch: Batch
    ) -> tuple[ModelOutput, ModelOutput | None]:
        """What the terms are sized from: the student's rows (:meth:`sampled_rows`) and the
        teacher's (eval mode) for the same RoIs or positions.

        Raises:
            ValueError: student and teacher are different kinds of detector.
        """
        rows = self.sampled_rows(student, batch)
        if teacher is None:
            return rows.output, None
        return rows.output, teacher_rows(self.forward(teacher, batch), rows, batch.images)

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable,
        device: torch.device,
        autocast: Autocast,
        memory_format: torch.memory_format | None = None,
    ) -> dict[str, float]:
        """:meth:`metrics` of ``model``'s detections over ``loader`` (torchvision's
        inference, boxes resized back to the loader's images), gathered over processes."""
        model.eval()
        rows = [torch.zeros(0, 7, device=device)]  # a process may hold no image
        images = torch.zeros((), dtype=torch.long, device=device)
        for raw in loader:
            batch = self.to_device(raw, device, memory_format)
            with autocast():
                detections = detect(model, batch.images)
            detections = self.eval_transform.postprocess(
                detections, batch.images.image_sizes, batch.original_sizes
            )
            rows.append(self.coco_rows(detections, batch.image_ids))
            images += len(detections)
        gathered = all_gather_rows(torch.cat(rows))
        return self.metrics(gathered.cpu(), int(all_reduce_sum(images)))

    def coco_rows(self, detections: list[Target], image_ids: torch.Tensor) -> torch.Tensor:
        """``[N, 7]`` float32 rows ``(image_id, x, y, w, h, score, category_id)`` of
        torchvision's per-image ``detections`` (boxes in the images' own pixels)."""
        boxes = torch.cat([d["boxes"] for d in detections]).float()
        counts = torch.tensor([len(d["boxes"]) for d in detections], device=image_ids.device)
        categories = torch.tensor(self.category_ids, device=boxes.device)
        labels = torch.cat([d["labels"] for d in detections])
        columns = [
            image_ids.repeat_interleave(counts)[:, None].float(),
            boxes[:, :2],
            boxes[:, 2:] - boxes[:, :2],
            torch.cat([d["scores"] for d in detections]).float()[:, None],
            categories[labels][:, None].float(),
        ]
        return torch.cat(columns, dim=1)

    def metrics(self, detections: torch.Tensor, images: int) -> dict[str, float]:
        """The evaluation record (%) of ``[N, 7]`` detection rows (:meth:`coco_rows`) of
        every evaluation image against the ground truth:

        - ``"coco"``: ``test_ap``, ``test_ap50``, ``test_ap75``, ``test_ap_small``,
          ``test_ap_medium``, ``test_ap_large`` (:data:`COCO_KEYS`; NaN where the ground
          truth has no box of that size) and ``test_ap/<class>`` (COCO AP of each class).
        - ``"voc07"``: ``test_ap`` (11-point mAP at IoU .5 over the classes with a
          non-difficult box) and ``test_ap/<class>`` (NaN for a class without one).
        - ``test_images``: ``images``.

        Raises:
            ValueError: no evaluation image.
        """
        if images == 0:
            raise ValueError("the evaluation split yielded no images")
        if self.metric == "coco":
            summary, per_category = coco_average_precisions(detections, self._coco_truth)
            record = {key: 100.0 * value for key, value in zip(COCO_KEYS, summary)}
        else:
            per_category = voc07_average_precisions(detections, self.ground_truth)
            mean = torch.tensor(list(per_category.values()), dtype=torch.float64).nanmean()
            record = {"test_ap": 100.0 * float(mean)}
        pairs = zip(self.classes[1:], self.category_ids[1:])
        record.update({f"test_ap/{name}": 100.0 * per_category[id_] for name, id_ in pairs})
        record["test_images"] = images
        return record

    @cached_property
    def _coco_truth(self) -> Any:
        """``pycocotools.coco.COCO`` of (a copy of) the ground truth, built once."""
        coco, _ = _pycocotools()
        truth = coco()
        truth.dataset = copy.deepcopy(dict(self.ground_truth))
        with _quiet():
            truth.createIndex()
        return truth

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
        """The teacher's box-head features (or ``feature(rows)``, one row per RoI) averaged
        per assigned class over its own sampled RoIs, summed over processes (Faster R-CNN
        only: RetinaNet's rows have no class).

        Each batch of ``loader`` (evaluation transform: ``test_size``) runs the teacher as a
        training step samples, without gradients and in eval mode otherwise
        (:meth:`sampled_rows`): its RPN's training proposals (up to
        ``rpn_post_nms_top_n_train`` per image after NMS) plus the ground-truth boxes, from
        which the RoI sampler draws up to ``box_batch_size_per_image`` (512) per image, at
        most ``box_positive_fraction`` (a quarter) of them matched to a box at IoU >= 0.5.
        Those RoIs are averaged, each under its assigned class (0: background), so
        ``num_classes`` is C + 1 and the means have C + 1 rows; ``counts`` are RoIs per
        class. The accumulation is :func:`ndkd.centers.class_means`'s (its ``metadata``,
        ``progress``; ``autocast_dtype`` applies to the teacher's forward).

        Raises:
            ValueError: a RetinaNet teacher.
        """
        if not row_type(teacher).has_classes:
            raise ValueError(
                "detection class means: RetinaNet's rows are feature-map positions, each with "
                "A anchors of their own classes, not one class per row; class means (and the "
                "terms that read them) need a Faster R-CNN teacher"
            )
        teacher.to(device)
        rows = _SampledRows(self, teacher, loader, device, autocast_dtype, feature)
        return class_means(_Rows(), rows, num_classes, device, metadata=metadata, progress=progress)


def teacher_rows(teacher: TeacherFeatures, rows: Rows, images: ImageList) -> ModelOutput:
    """The teacher's rows for the student's ``rows`` (its box head and predictor on the same
    RoIs, its classification subnet at the same positions), without gradients, under the
    autocast its FPN maps were computed in (none for float32 maps)."""
    level = next(iter(teacher.features.values()))
    half = level.dtype in (torch.float16, torch.bfloat16)
    with torch.no_grad(), torch.autocast(level.device.type, dtype=level.dtype, enabled=half):
        return rows.outputs_of(teacher.model, teacher.features, images.image_sizes)


def coco_average_precisions(
    detections: torch.Tensor, truth: Any
) -> tuple[list[float], dict[int, float]]:
    """COCO's bounding-box evaluation (``pycocotools``, its output silenced) of ``[N, 7]``
    rows ``(image_id, x, y, w, h, score, category_id)`` against ``truth`` (a
    ``pycocotools.coco.COCO``): the first six summary numbers (fractions; NaN for -1, no box
    of that size) and the AP of each category (all sizes, 100 detections per image; NaN for
    a category without boxes), by category id."""
    coco, cocoeval = _pycocotools()
    with _quiet():
        if len(detections):
            results = truth.loadRes(detections.detach().double().cpu().numpy())
        else:
            results = coco()
            results.dataset = {**truth.dataset, "annotations": []}
            results.createIndex()
        evaluation = cocoeval(truth, results, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    summary = [float("nan") if value == -1 else float(value) for value in evaluation.stats[:6]]
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, category]
    valid = precision > -1
    counts = valid.sum(axis=(0, 1))
    sums = np.where(valid, precision, 0.0).sum(axis=(0, 1))
    per_category = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return summary, dict(zip(evaluation.params.catIds, per_category.tolist()))


class _Rows(nn.Module):
    """The "model" :func:`ndkd.centers.class_means` runs on :class:`_SampledRows`: the rows
    pass through as the embedding."""

    def forward(self, rows: torch.Tensor) -> ModelOutput:
        return ModelOutput(rows, rows)


class _SampledRows:
    """A loader of ``(rows [R, D], labels [R])``: the teacher's rows on its sampled RoIs
    (:meth:`DetectionTask.sampled_rows`) for each batch of ``loader``."""

    def __init__(
        self,
        task: DetectionTask,
        teacher: nn.Module,
        loader: Iterable,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        feature: FeatureSelector | None,
    ) -> None:
        self.task, self.teacher, self.loader = task, teacher, loader
        self.device, self.autocast_dtype, self.feature = device, autocast_dtype, feature

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        enabled = self.autocast_dtype is not None
        for raw in self.loader:
            batch = self.task.to_device(raw, self.device, None)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
                sampled = self.task.sampled_rows(self.teacher, batch)
                output, labels = sampled.output, sampled.labels
                rows = output.embedding if self.feature is None else self.feature(output)
            if rows.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"detection class means: the feature has {rows.shape[0]} rows for "
                    f"{labels.shape[0]} RoIs; it must give one row per RoI"
                )
            yield rows, labels


def _refuse_class_readers(method: nn.Module) -> None:
    """Refuse the terms of ``method`` (a :class:`~ndkd.methods.Distiller`) that read one
    class label per row: RetinaNet's rows have one per anchor."""
    terms = getattr(method, "terms", {})
    readers = [name for name, term in terms.items() if term.reads_class_labels]
    if readers:
        raise ValueError(
            f"detection: loss term {readers[0]!r} reads one class label per row, but "
            "RetinaNet's rows are feature-map positions with one class per anchor; use terms "
            "on the embeddings (l2, lsh, lshl2; lshfm with teacher_correct_only: false)"
        )


def _pycocotools() -> tuple[Any, Any]:
    """``(COCO, COCOeval)``, or one line saying how to install them."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError(
            'detection: the COCO metric needs pycocotools: pip install "ndkd[detection]"'
        ) from None
    return COCO, COCOeval


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pycocotools prints its progress; the library sends it to the debug log instead."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        yield
    for line in captured.getvalue().splitlines():
        if line.strip():
            log.debug("pycocotools: %s", line.strip())
