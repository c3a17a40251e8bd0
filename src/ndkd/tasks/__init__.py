"""Tasks: what a batch, a prediction and a metric are (DESIGN.md, "Tasks").

The engine runs any :class:`~ndkd.tasks.base.Task`; :func:`build_task` picks one by the
config's ``task`` name.
"""

from __future__ import annotations

from collections.abc import Callable

from ndkd.tasks.base import Task, TrainMeter
from ndkd.tasks.classification import ClassificationTask

TASKS: dict[str, Callable[[], Task]] = {"classification": ClassificationTask}


def build_task(name: str) -> Task:
    """The task called ``name`` (a key of :data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(TASKS)}")
    return TASKS[name]()


__all__ = ["TASKS", "ClassificationTask", "Task", "TrainMeter", "build_task"]
