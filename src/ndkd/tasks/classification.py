"""Single-label classification: images and integer labels, one loss row per image,
top-1/top-5 accuracy; class means are the teacher's image embeddings averaged per label."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ndkd.centers import ClassMeans, class_means
from ndkd.collective import all_reduce_sum
from ndkd.methods.base import MAIN_VIEW, StepOutputs
from ndkd.models.output import ModelOutput
from ndkd.tasks.base import Autocast
from ndkd.tasks.mixing import BatchMixer


@dataclass
class Batch:
    """Images ``[B, C, H, W]``, labels ``[B]``, when a term asks for them the samples'
    dataset indices ``[B]``, and for a mixed training batch its ``[B, C]`` class weights.

    A training batch of several views: ``images`` is the main (weak) view and
    ``extra_views`` the others by name (``{"strong": [B, C, H, W]}``), the same samples in
    the same order."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor | None = None
    mix_weights: torch.Tensor | None = None
    extra_views: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class ViewOutputs:
    """A model's outputs on each view of a batch, by view name, the main view first (each
    view from a pass of its own)."""

    views: dict[str, ModelOutput]

    @property
    def main(self) -> ModelOutput:
        return next(iter(self.views.values()))

    def __getitem__(self, view: str) -> ModelOutput:
        return self.views[view]


def main_output(output: Any) -> Any:
    """The main view's outputs of ``output`` (``output`` itself when it has one view)."""
    return output.main if isinstance(output, ViewOutputs) else output


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, for each k (a device tensor;
    k is capped at the class count)."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top.eq(labels.unsqueeze(1))
    return torch.stack([hits[:, : min(k, k_max)].any(dim=1).sum() for k in ks])


def fp32_output(output: ModelOutput | None) -> ModelOutput | None:
    """``output`` with its half-precision tensors (from autocast) cast to float32; other
    tensors (float32, float64) pass through unchanged."""
    if output is None:
        return output

    def up(x: torch.Tensor) -> torch.Tensor:
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

    return ModelOutput(
        up(output.logits),
        up(output.embedding),
        [up(x) for x in output.stages],
        [up(x) for x in output.preact_stages],
        {name: up(x) for name, x in output.heads.items()},
    )


def _placed(
    images: torch.Tensor, device: torch.device, memory_format: torch.memory_format | None
) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images if memory_format is None else images.contiguous(memory_format=memory_format)


def _rows(
    student_out: ModelOutput, teacher_out: ModelOutput | None, batch: Batch, images: torch.Tensor
) -> StepOutputs:
    return StepOutputs(
        fp32_output(student_out),
        fp32_output(teacher_out),
        batch.labels,
        images,
        batch.indices,
        batch.mix_weights,
    )


class AccuracyMeter:
    """Training top-1/top-5 and the mean embedding norms of student and teacher."""

    def __init__(self, device: torch.device, with_teacher: bool) -> None:
        self.with_teacher = with_teacher
        self.sums = torch.zeros(5, dtype=torch.float64, device=device)  # n, top1, top5, |s|, |t|

    @torch.no_grad()
    def update(self, student_out: Any, teacher_out: Any, batch: Batch):
        """Counts one batch: of a batch of views, the main (weak) view's outputs."""
        student_out, teacher_out = main_output(student_out), main_output(teacher_out)
        self.sums[0] += batch.labels.shape[0]
        self.sums[1:3] += topk_correct(student_out.logits.detach(), batch.labels).to(
            self.sums.dtype
        )
        self.sums[3] += torch.linalg.vector_norm(student_out.embedding.float(), dim=1).sum()
        if teacher_out is not None:
            self.sums[4] += torch.linalg.vector_norm(teacher_out.embedding.float(), dim=1).sum()

    def totals(self) -> torch.Tensor:
        return self.sums

    def summarize(self, totals: list[float]) -> dict[str, float]:
        n, top1, top5, s_norm, t_norm = totals
        record = {
            "train_top1": 100.0 * top1 / n,
            "train_top5": 100.0 * top5 / n,
            "student_emb_norm": s_norm / n,
        }
        if self.with_teacher:
            record["teacher_emb_norm"] = t_norm / n
        return record


class ImageRows:
    """Probing of the tasks whose rows are images: a model's rows are its outputs."""

    def forward(self, model: nn.Module, batch: Any) -> ModelOutput:
        return model(batch.images)

    def feature_rows(self, model: nn.Module, batch: Any) -> ModelOutput:
        """``model``'s rows on ``batch``: its outputs, one row per image."""
        return self.forward(model, batch)

    @torch.no_grad()
    def probe_rows(
        self, student: nn.Module, teacher: nn.Module | None, batch: Any
    ) -> tuple[ModelOutput, ModelOutput | None]:
        """Student and teacher outputs in eval mode, to size a method's modules."""
        student_rows = self.forward(student.eval(), batch)
        return student_rows, None if teacher is None else self.forward(teacher, batch)


class ClassificationTask(ImageRows):
    """The single-label task (CIFAR, digits, image folders): ``best.pt`` by test top-1.

    ``mixer``: mixup / CutMix of training batches (:class:`~ndkd.tasks.mixing.BatchMixer`);
    the terms then see the mixed images and the mixing weights.

    ``views``: the names of the views a training batch holds, the main one first
    (``("weak", "strong")`` with ``data.strong_view``). A loader batch of views is
    ``[(view_1, ..., view_k), labels(, indices)]`` (:class:`ndkd.data.views.TwoViewDataset`);
    :meth:`forward` then runs the model once per view, in order (so a student in training
    mode normalizes each view with its own batch statistics, as MLKD's code does), and
    returns :class:`ViewOutputs`; :meth:`step_losses` gives the method one
    :class:`~ndkd.methods.StepOutputs` per view; the training accuracy and norms are the
    main view's. Evaluation, probes and class means read one-view batches."""

    primary_metric = "test_top1"

    def __init__(
        self, mixer: BatchMixer | None = None, views: tuple[str, ...] = (MAIN_VIEW,)
    ) -> None:
        if not views or views[0] != MAIN_VIEW or len(set(views)) != len(views):
            raise ValueError(f"views: distinct names, {MAIN_VIEW!r} first; found {views!r}")
        if mixer is not None and len(views) > 1:
            raise ValueError("mixup/CutMix of a batch of several views is not defined")
        self.mixer = mixer
        self.views = tuple(views)

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """``model``'s outputs on ``batch``; on a batch of views, one pass per view."""
        if not batch.extra_views:
            return model(batch.images)
        outputs = {self.views[0]: model(batch.images)}
        for view, images in batch.extra_views.items():
            outputs[view] = model(images)
        return ViewOutputs(outputs)

    def to_device(
        self,
        batch: tuple,
        device: torch.device,
        memory_format: torch.memory_format | None,
        train: bool = False,
    ) -> Batch:
        images, labels, *extra = batch
        views = {}
        if isinstance(images, (list, tuple)):  # a batch of views, the main one first
            if len(images) != len(self.views):
                raise ValueError(
                    f"a batch of {len(images)} views, but the task has the views "
                    f"{', '.join(self.views)}"
                )
            images, *others = images
            views = {
                view: _placed(x, device, memory_format)
                for view, x in zip(self.views[1:], others, strict=True)
            }
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        weights = None
        if train and self.mixer is not None:
            images, weights = self.mixer(images, labels)
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        indices = extra[0].to(device, non_blocking=True) if extra else None
        return Batch(images, labels, indices, weights, views)

    def step_losses(
        self,
        method: nn.Module,
        student_out: ModelOutput,
        teacher_out: ModelOutput | None,
        batch: Batch,
        epoch: int,
    ) -> dict[str, torch.Tensor]:
        """One row per image; the terms see float32 outputs (CE is a term here). Of a batch
        of views, one :class:`~ndkd.methods.StepOutputs` per view, by view name."""
        if not isinstance(student_out, ViewOutputs):
            return method(_rows(student_out, teacher_out, batch, batch.images), epoch)
        images = {self.views[0]: batch.images, **batch.extra_views}
        rows: Mapping[str, StepOutputs] = {
            view: _rows(
                output,
                None if teacher_out is None else teacher_out[view],
                batch,
                images[view],
            )
            for view, output in student_out.views.items()
        }
        return method(rows, epoch)

    def train_meter(self, device: torch.device, with_teacher: bool) -> AccuracyMeter:
        return AccuracyMeter(device, with_teacher)

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable,
        device: torch.device,
        autocast: Autocast,
        memory_format: torch.memory_format | None = None,
    ) -> dict[str, float]:
        """Top-1/top-5 accuracy (%) of ``model`` over ``loader``, summed over processes."""
        model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        for raw in loader:
            batch = self.to_device(raw, device, memory_format)
            with autocast():
                logits = self.forward(model, batch).logits
            totals[0] += batch.labels.shape[0]
            totals[1:] += topk_correct(logits.float(), batch.labels).to(totals.dtype)
        n, top1, top5 = all_reduce_sum(totals).tolist()
        if n == 0:
            raise ValueError("the evaluation split yielded no samples")
        return {
            "test_top1": 100.0 * top1 / n,
            "test_top5": 100.0 * top5 / n,
            "test_samples": int(n),
        }

    def class_means(
        self,
        teacher: nn.Module,
        loader: Iterable,
        num_classes: int,
        device: torch.device,
        **options: Any,
    ) -> ClassMeans:
        """The teacher's embedding (or ``options["feature"]`` of its output) averaged per
        label over ``loader`` (:func:`ndkd.centers.class_means`)."""
        return class_means(teacher, loader, num_classes, device, **options)
