"""A sweep's runs as SLURM jobs through submitit (one job-array task per run), or through
submitit's local executor (``cluster="local"``: the same jobs as local processes).

Each task runs :class:`SweepJob`: it reads the run's state again (a requeued task resumes
with ``--resume``, a finished one returns at once) and trains it as the local queue does.
On preemption or timeout submitit calls :meth:`SweepJob.checkpoint`: the run gets SIGTERM,
writes its checkpoint and exits, and the task is requeued.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from ndkd.sweep.events import EventFn, SweepEvent, SweepSummary
from ndkd.sweep.local import cpu_count
from ndkd.sweep.plan import RunSpec
from ndkd.sweep.runner import Running, Slot, last_metric, launch, stop, wait
from ndkd.sweep.state import read_state

log = logging.getLogger(__name__)

Cluster = Literal["slurm", "local"]

MAX_TIMEOUTS = 10
"""Requeues after a timeout before a task gives up (preemptions do not count): a run
longer than the time limit continues over several jobs."""

DEFAULT_TIME_MIN = 24 * 60

NOT_SUBMITTED = {"done": "skipped", "busy": "busy", "conflict": "conflict"}


@dataclass(frozen=True)
class JobOptions:
    """Resources of each task (``None``: the cluster's default)."""

    partition: str | None = None
    time_min: int | None = None
    """Time limit of a job (default 24 h; a longer run continues in a requeued job)."""
    gpus_per_task: int | None = None
    """Default: 1 on SLURM, 0 with the local executor."""
    cpus_per_task: int | None = None
    """Also each run's CPU threads; default with the local executor: cores / runs."""
    mem_gb: float | None = None
    array_parallelism: int | None = None


class SweepJob(Checkpointable):
    """The task of one run: train it to the end, resuming whatever an earlier task left."""

    def __init__(self, spec: RunSpec, cwd: Path, threads: int | None = None) -> None:
        self.spec = spec
        self.cwd = cwd
        self.threads = threads
        self._running: Running | None = None

    def __call__(self) -> SweepEvent:
        spec = self.spec
        state = read_state(spec)
        if state.kind == "done":
            return SweepEvent("skipped", spec)
        if state.kind != "new" and state.kind != "resume":
            raise RuntimeError(f"{spec.run_dir}: {state.kind}: {state.detail}")
        slot = Slot(f"job {submitit.JobEnvironment().job_id}", threads=self.threads)
        self._running = launch(spec, slot, resume=state.kind == "resume", cwd=self.cwd)
        code = wait(self._running)
        wall, self._running = self._running.wall_s, None
        if code != 0:
            raise RuntimeError(f"ndkd train exited with {code}; see {spec.log_path}")
        metric = last_metric(spec.run_dir)
        return SweepEvent("finished", spec, slot.label, state.kind == "resume", wall, metric)

    def checkpoint(self) -> DelayedSubmission:
        """Stop the run (it checkpoints) and requeue this task."""
        if self._running is not None:
            code = stop(self._running)
            log.warning("%s stopped for requeue (exit %d)", self.spec.run_dir, code)
        return DelayedSubmission(SweepJob(self.spec, self.cwd, self.threads))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_running"] = None  # a process does not travel
        return state


def make_executor(folder: Path, cluster: Cluster, options: JobOptions) -> submitit.AutoExecutor:
    """A submitit executor writing its scripts and logs into ``folder``.

    Raises:
        ValueError: ``cluster="slurm"`` on a machine without ``sbatch``.
    """
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ValueError(
            "sbatch not found: --executor slurm submits from a SLURM login node "
            "(--executor submitit-local runs the same jobs here)"
        )
    executor = submitit.AutoExecutor(
        folder=folder,
        cluster=cluster,
        slurm_max_num_timeout=MAX_TIMEOUTS,
        local_max_num_timeout=MAX_TIMEOUTS,
    )
    executor.update_parameters(
        name="ndkd-sweep",
        timeout_min=options.time_min or DEFAULT_TIME_MIN,
        nodes=1,
        tasks_per_node=1,
        gpus_per_node=(
            options.gpus_per_task if options.gpus_per_task is not None else int(cluster == "slurm")
        ),
        cpus_per_task=options.cpus_per_task,
        mem_gb=options.mem_gb,
        slurm_partition=options.partition,
        slurm_array_parallelism=options.array_parallelism,
    )
    return executor


def submit(
    runs: Sequence[RunSpec],
    executor: submitit.Executor,
    threads: int | None = None,
    on_event: EventFn | None = None,
    cwd: Path | None = None,
) -> tuple[list[SweepEvent], dict[int, submitit.Job]]:
    """Submit the runs that are not done, busy or conflicting, as one job array; the
    events of every run and the job of each submitted one, by run index. ``threads``: the
    CPU threads of each run (``None``: as the job's environment says)."""
    events: list[SweepEvent] = []
    to_submit = []
    for index, spec in enumerate(runs):
        state = read_state(spec)
        if state.kind in NOT_SUBMITTED:
            events.append(SweepEvent(NOT_SUBMITTED[state.kind], spec, detail=state.detail))
        else:
            to_submit.append(index)
    where = (cwd or Path.cwd()).absolute()
    tasks = [SweepJob(runs[index], where, threads) for index in to_submit]
    jobs = executor.submit_array(tasks) if tasks else []
    submitted = dict(zip(to_submit, jobs))
    for index, job in submitted.items():
        events.append(SweepEvent("submitted", runs[index], detail=f"job {job.job_id}"))
    if on_event is not None:
        for event in events:
            on_event(event)
    return events, submitted


def sweep_jobs(
    runs: Sequence[RunSpec],
    folder: Path,
    cluster: Cluster,
    options: JobOptions,
    on_event: EventFn | None = None,
    wait_jobs: bool = False,
) -> SweepSummary:
    """Submit ``runs`` (:func:`submit`) with submitit's files in ``folder`` and, with
    ``wait_jobs``, wait for every job, reporting each as it ends; the last event of every
    run (``submitted`` for the jobs not waited for)."""
    threads = options.cpus_per_task
    if threads is None and cluster == "local":  # the jobs share this machine's cores
        threads = max(1, cpu_count() // len(runs))
    executor = make_executor(folder, cluster, options)
    events, pending = submit(runs, executor, threads, on_event)
    outcomes = {id(event.spec): event for event in events}
    poll_s = 1.0 if cluster == "local" else 10.0  # SLURM: each poll asks sacct
    while wait_jobs and pending:
        for index in [index for index, job in pending.items() if job.done()]:
            event = _job_outcome(runs[index], pending.pop(index))
            outcomes[id(runs[index])] = event
            if on_event is not None:
                on_event(event)
        if pending:
            time.sleep(poll_s)
    return SweepSummary(tuple(outcomes[id(spec)] for spec in runs))


def _job_outcome(spec: RunSpec, job: submitit.Job) -> SweepEvent:
    try:
        return job.result()
    except Exception as error:  # the task's exception, as submitit reports it
        lines = [line for line in str(error).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else type(error).__name__
        return SweepEvent("failed", spec, detail=f"job {job.job_id}: {reason}")
