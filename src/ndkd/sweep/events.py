"""What a sweep reports: one event per run event, and the summary at the end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ndkd.sweep.plan import RunSpec

EventKind = Literal[
    "started",  # a run began (slot, resumed)
    "finished",  # exit 0 (wall_s, metric)
    "failed",  # another exit (returncode, detail)
    "interrupted",  # stopped by a signal; it resumes from its checkpoint on the next sweep
    "skipped",  # already done
    "busy",  # another process trains it (detail: who)
    "conflict",  # its folder holds another recipe (detail: the keys)
    "cancelled",  # not started: the sweep was stopped first
    "submitted",  # handed to the scheduler (detail: the job id)
]

DONE_KINDS = ("finished", "skipped")


@dataclass(frozen=True)
class SweepEvent:
    """One event of one run."""

    kind: EventKind
    spec: RunSpec
    slot: str = ""
    resumed: bool = False
    wall_s: float | None = None
    metric: tuple[str, float] | None = None
    """The primary test metric of the last epoch, e.g. ``("test_top1", 70.12)``."""
    returncode: int | None = None
    detail: str = ""


EventFn = Callable[[SweepEvent], None]


@dataclass(frozen=True)
class SweepSummary:
    """The last event of every run, in plan order."""

    outcomes: tuple[SweepEvent, ...]

    @property
    def unfinished(self) -> list[SweepEvent]:
        """Runs that are not done (failed, interrupted, busy, conflict, cancelled, or only
        submitted)."""
        return [event for event in self.outcomes if event.kind not in DONE_KINDS]

    @property
    def all_done(self) -> bool:
        return not self.unfinished
