"""What a task is: the only place that knows what a batch, a prediction and a metric are.

The engine runs any object with this interface and never names a task; the experiment layer
picks one by the config's ``task`` key (:func:`ndkd.tasks.build_task`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn

Autocast = Callable[[], Any]
"""A zero-argument context-manager factory (``torch.autocast(...)`` or ``nullcontext``)."""


class TrainMeter(Protocol):
    """Training statistics of one epoch, accumulated on the device with no host sync.

    The engine all-reduces :meth:`totals` together with its loss sums (one collective per
    epoch) and hands the summed values to :meth:`summarize`. The first total is the number
    of images seen (the engine reports images/s from it).
    """

    def update(self, student_out: Any, teacher_out: Any, batch: Any) -> None: ...
    def totals(self) -> torch.Tensor: ...
    def summarize(self, totals: list[float]) -> dict[str, float]: ...


class Task(Protocol):
    """A training task (single-label classification, multi-label, detection, ...).

    - ``primary_metric``: the evaluation key that picks ``best.pt`` (higher is better).
    - :meth:`to_device`: a loader's raw batch -> the task's batch on ``device`` (``train``:
      a training batch, where batch-level augmentation such as mixup applies).
    - :meth:`forward`: a model's outputs for a batch (teacher and student alike).
    - :meth:`step_losses`: the rows the loss terms see (``StepOutputs``) from the student's
      and teacher's outputs, passed to ``method``, plus the task's own losses (e.g. a
      detector's); returns ``{name: weighted loss}``.
    - :meth:`train_meter`: per-epoch training statistics; :meth:`evaluate`: metrics on a
      loader that covers this process's share of the evaluation set exactly once, summed
      over processes.
    - :meth:`class_means`: the teacher's per-class mean features over ``loader`` (what they
      are averaged over is the task's choice: image embeddings per label for classification).
    - :meth:`probe_rows`: the student's and teacher's rows on a probe batch (what a
      method's modules are sized from); :meth:`feature_rows`: a model's rows on a batch
      (images, or a detector's sampled RoIs), for passes such as the LSH bias.
    """

    primary_metric: str

    def to_device(
        self,
        batch: Any,
        device: torch.device,
        memory_format: torch.memory_format | None,
        train: bool = False,
    ) -> Any: ...

    def forward(self, model: nn.Module, batch: Any) -> Any: ...

    def step_losses(
        self, method: nn.Module, student_out: Any, teacher_out: Any, batch: Any, epoch: int
    ) -> dict[str, torch.Tensor]: ...

    def train_meter(self, device: torch.device, with_teacher: bool) -> TrainMeter: ...

    def evaluate(
        self,
        model: nn.Module,
        loader: Iterable,
        device: torch.device,
        autocast: Autocast,
        memory_format: torch.memory_format | None = None,
    ) -> dict[str, float]: ...

    def probe_rows(
        self, student: nn.Module, teacher: nn.Module | None, batch: Any
    ) -> tuple[Any, Any]: ...

    def feature_rows(self, model: nn.Module, batch: Any) -> Any: ...

    def class_means(
        self,
        teacher: nn.Module,
        loader: Iterable,
        num_classes: int,
        device: torch.device,
        **options: Any,
    ) -> Any: ...
