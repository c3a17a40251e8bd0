"""The local queue: a sweep's runs on this machine's slots (GPUs x runs per GPU, or CPU
processes), as many at once as there are slots.

Each run's state is read again just before it starts: a finished one is skipped, a busy
or conflicting one is reported and not started, a started one resumes. SIGINT or SIGTERM to
the sweep stops starting runs, forwards SIGTERM to the running ones (each checkpoints at its
next step) and waits for them.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from collections.abc import Sequence

import torch

from ndkd.engine.stop_signals import StopSignals
from ndkd.sweep.events import EventFn, SweepEvent, SweepSummary
from ndkd.sweep.plan import RunSpec
from ndkd.sweep.runner import STOPPED_CODES, Running, Slot, last_metric, launch
from ndkd.sweep.state import read_state

log = logging.getLogger(__name__)

NOT_STARTED = {"done": "skipped", "busy": "busy", "conflict": "conflict"}


def cpu_count() -> int:
    """CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """This process's GPUs as ``CUDA_VISIBLE_DEVICES`` values (the parent's list kept)."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


def choose_slots(
    gpus: Sequence[str] | None = None, per_gpu: int | None = None, workers: int | None = None
) -> list[Slot]:
    """``per_gpu`` slots (default 1) on each of ``gpus`` (default: the visible ones), or
    ``workers`` CPU processes with every GPU hidden; with no GPU and no ``workers``, one CPU
    process. Each slot gets ``cpu_count() // slots`` CPU threads (at least 1).

    Raises:
        ValueError: ``workers`` together with ``gpus``/``per_gpu``, a count below 1, or
            ``per_gpu`` on a machine without GPUs.
    """
    if workers is not None and (gpus is not None or per_gpu is not None):
        raise ValueError("--workers runs CPU processes, --gpus/--per-gpu GPU ones: give one kind")
    for name, count in (("--workers", workers), ("--per-gpu", per_gpu)):
        if count is not None and count < 1:
            raise ValueError(f"{name} must be at least 1, found {count}")
    if workers is None:
        devices = list(gpus) if gpus is not None else visible_gpus()
        if gpus is not None and not devices:
            raise ValueError("--gpus names no GPU; e.g. --gpus 0,1")
        if devices:
            per = per_gpu or 1
            threads = max(1, cpu_count() // (len(devices) * per))
            return [  # runs spread over the GPUs before they share one
                Slot(f"gpu{gpu}" + (f".{k}" if per > 1 else ""), gpu, threads)
                for k in range(per)
                for gpu in devices
            ]
        if per_gpu is not None:
            raise ValueError("--per-gpu: no GPU is visible; use --workers N for CPU processes")
    count = workers or 1
    threads = max(1, cpu_count() // count)
    return [Slot(f"cpu{k}", "", threads) for k in range(count)]


def run_queue(
    runs: Sequence[RunSpec],
    slots: Sequence[Slot],
    on_event: EventFn | None = None,
    poll_s: float = 0.2,
) -> SweepSummary:
    """Run ``runs`` on ``slots`` (from the main thread), reporting each event to
    ``on_event``; returns the last event of every run."""
    if not slots:
        raise ValueError("no slot to run on")
    queue = _Queue(runs, slots, on_event)
    with StopSignals() as signals:
        try:
            while queue.pending or queue.running:
                if signals.signum and not queue.stopping:
                    log.warning(
                        "%s: stopping %d running run(s)", signals.name(), len(queue.running)
                    )
                    queue.stop()
                queue.start_free_slots()
                queue.collect_ended()
                if queue.running:
                    time.sleep(poll_s)
        finally:
            queue.terminate()  # only after an error is anything left running
    return SweepSummary(tuple(queue.outcomes[index] for index in range(len(runs))))


class _Queue:
    """The queue's bookkeeping: runs not started, runs running per slot, last events."""

    def __init__(self, runs: Sequence[RunSpec], slots: Sequence[Slot], on_event: EventFn | None):
        self.runs, self.slots, self.on_event = runs, slots, on_event
        self.pending = deque(range(len(runs)))
        self.running: dict[int, tuple[int, Running]] = {}  # slot -> (run, its process)
        self.outcomes: dict[int, SweepEvent] = {}
        self.stopping = False

    def report(self, index: int | None, event: SweepEvent) -> None:
        if index is not None:
            self.outcomes[index] = event
        if self.on_event is not None:
            self.on_event(event)

    def start_free_slots(self) -> None:
        free = deque(slot for slot in range(len(self.slots)) if slot not in self.running)
        while free and self.pending:
            index = self.pending.popleft()
            spec = self.runs[index]
            state = read_state(spec)
            if state.kind in NOT_STARTED:
                self.report(index, SweepEvent(NOT_STARTED[state.kind], spec, detail=state.detail))
                continue
            slot = free.popleft()
            started = launch(spec, self.slots[slot], resume=state.kind == "resume")
            self.running[slot] = (index, started)
            self.report(None, SweepEvent("started", spec, started.slot.label, started.resumed))

    def collect_ended(self) -> None:
        for slot, (index, started) in list(self.running.items()):
            code = started.process.poll()
            if code is not None:
                del self.running[slot]
                self.report(index, _ended(started, code, self.stopping))

    def stop(self) -> None:
        """Start nothing more; SIGTERM to the running runs (they checkpoint and exit)."""
        self.stopping = True
        self.terminate()
        while self.pending:
            index = self.pending.popleft()
            self.report(index, SweepEvent("cancelled", self.runs[index]))

    def terminate(self) -> None:
        for _, started in self.running.values():
            if started.process.poll() is None:
                started.process.send_signal(signal.SIGTERM)


def _ended(started: Running, code: int, stopping: bool) -> SweepEvent:
    spec, slot, wall = started.spec, started.slot.label, started.wall_s
    if code == 0:
        return SweepEvent("finished", spec, slot, started.resumed, wall, last_metric(spec.run_dir))
    kind = "interrupted" if stopping or code in STOPPED_CODES else "failed"
    return SweepEvent(kind, spec, slot, started.resumed, wall, returncode=code)
