"""Tasks: what a batch, a prediction and a metric are (DESIGN.md, "Tasks").

The engine runs any :class:`~ndkd.tasks.base.Task`; :func:`build_task` picks one by the
config's ``task`` name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ndkd.tasks.base import Task, TrainMeter
from ndkd.tasks.classification import ClassificationTask
from ndkd.tasks.detection import DetectionTask
from ndkd.tasks.mixing import BatchMixer
from ndkd.tasks.multilabel import MultiLabelTask

TASKS: dict[str, Callable[..., Task]] = {
    "classification": ClassificationTask,
    "multilabel": MultiLabelTask,
    "detection": DetectionTask,
}


def build_task(name: str, **options: Any) -> Task:
    """The task called ``name`` (a key of :data:`TASKS`) with its ``options``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name](**options)


__all__ = [
    "TASKS",
    "BatchMixer",
    "ClassificationTask",
    "DetectionTask",
    "MultiLabelTask",
    "Task",
    "TrainMeter",
    "build_task",
]
