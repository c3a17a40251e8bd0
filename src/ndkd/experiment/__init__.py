"""Build a run from its config (data, models, task, method) and train it, compute its
class means, or evaluate it. Each entry point builds only what it needs."""

from ndkd.experiment.device import resolve_device
from ndkd.experiment.run import (
    Experiment,
    build,
    compute_centers,
    evaluate,
    train,
    trained_student,
)
from ndkd.experiment.run_folder import RunFolderError, RunPlan, plan_run

__all__ = [
    "Experiment",
    "RunFolderError",
    "RunPlan",
    "build",
    "compute_centers",
    "evaluate",
    "plan_run",
    "resolve_device",
    "train",
    "trained_student",
]
