"""Many runs: every config x seed in its own run folder, on a local queue over GPUs or CPU
processes, or as SLURM jobs through submitit (``ndkd sweep``)."""

from __future__ import annotations

from types import ModuleType

from ndkd.sweep.events import EventFn, SweepEvent, SweepSummary
from ndkd.sweep.local import choose_slots, run_queue
from ndkd.sweep.plan import RunSpec, SweepPlan, plan_sweep
from ndkd.sweep.runner import Slot
from ndkd.sweep.state import RunState, read_state


def slurm_backend() -> ModuleType:
    """:mod:`ndkd.sweep.slurm`; ValueError naming the extra to install when submitit is
    missing."""
    try:
        from ndkd.sweep import slurm
    except ModuleNotFoundError as error:
        if error.name != "submitit":
            raise
        raise ValueError(
            "SLURM sweeps need submitit: pip install 'ndkd[sweep]' (or pip install submitit)"
        ) from None
    return slurm


__all__ = [
    "EventFn",
    "RunSpec",
    "RunState",
    "Slot",
    "SweepEvent",
    "SweepPlan",
    "SweepSummary",
    "choose_slots",
    "plan_sweep",
    "read_state",
    "run_queue",
    "slurm_backend",
]
