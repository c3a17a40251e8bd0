"""``ndkd sweep``: what a person sees of a sweep (the plan, one line per run event, the runs
left undone); the sweep itself is :mod:`ndkd.sweep`. Imports the library lazily, as
:mod:`ndkd.cli` does."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ndkd.sweep import SweepEvent, SweepPlan

SWEEP_EXECUTORS = {"local": "", "slurm": "slurm", "submitit-local": "local"}
"""``ndkd sweep --executor`` choices: the local queue, or submitit's cluster of that name."""
_LOCAL_SWEEP_OPTIONS = ("gpus", "per_gpu", "workers")
_SLURM_SWEEP_OPTIONS = (
    "partition",
    "time_min",
    "gpus_per_task",
    "cpus_per_task",
    "mem_gb",
    "array_parallelism",
)


def sweep_command(args: argparse.Namespace) -> int:
    """Run ``ndkd sweep`` with the parsed ``args``; the exit status."""
    from ndkd.sweep import plan_sweep

    _check_sweep_options(args)
    plan = plan_sweep(args.configs, args.seeds, args.overrides, args.out)
    if plan.bases:
        names = ", ".join(str(path) for path in plan.bases)
        print(f"left out {len(plan.bases)} base file(s), not recipes: {names}")
    if args.dry_run:
        return _sweep_dry_run(plan)
    printer = _SweepPrinter(len(plan.runs))
    if args.executor == "local":
        from ndkd.sweep import choose_slots, run_queue

        gpus = None if args.gpus is None else [g.strip() for g in args.gpus.split(",") if g.strip()]
        slots = choose_slots(gpus, args.per_gpu, args.workers)
        labels = ", ".join(slot.label for slot in slots)
        print(f"sweep: {len(plan.runs)} runs, {len(slots)} at a time ({labels})", flush=True)
        summary = run_queue(plan.runs, slots, printer)
    else:
        from ndkd.sweep import slurm_backend

        slurm = slurm_backend()
        options = slurm.JobOptions(**{name: getattr(args, name) for name in _SLURM_SWEEP_OPTIONS})
        folder = plan.root / "slurm"
        cluster = SWEEP_EXECUTORS[args.executor]
        summary = slurm.sweep_jobs(plan.runs, folder, cluster, options, printer, args.wait)
        if not args.wait:
            submitted = sum(event.kind == "submitted" for event in summary.outcomes)
            print(f"submitted {submitted} job(s); submitit's logs: {folder}")
            print(f"when they are done: ndkd analyze {plan.root}")
            return _sweep_problems([e for e in summary.unfinished if e.kind != "submitted"])
    status = _sweep_problems(summary.unfinished)
    if not status:
        print(f"all {len(plan.runs)} runs done")
    print(f"results table: ndkd analyze {plan.root}")
    return status


def _check_sweep_options(args: argparse.Namespace) -> None:
    local = args.executor == "local"
    misplaced = _SLURM_SWEEP_OPTIONS + ("wait",) if local else _LOCAL_SWEEP_OPTIONS
    for name in misplaced:
        if getattr(args, name) not in (None, False):
            where = "slurm or submitit-local" if local else "local"
            raise ValueError(f"--{name.replace('_', '-')} applies to --executor {where}")


def _sweep_dry_run(plan: SweepPlan) -> int:
    from collections import Counter

    from ndkd.sweep import read_state

    states = [read_state(spec) for spec in plan.runs]
    width = max(len(str(spec.config_path)) for spec in plan.runs)
    for spec, state in zip(plan.runs, states):
        detail = f"  ({state.detail})" if state.detail else ""
        print(
            f"{state.kind:<9} {str(spec.config_path):<{width}}  seed {spec.seed:<3} "
            f"{spec.run_dir}{detail}"
        )
    counts = Counter(state.kind for state in states)
    print(
        f"{len(plan.runs)} runs ({', '.join(f'{n} {kind}' for kind, n in counts.items())}) "
        f"under {plan.root}; nothing started (--dry-run)"
    )
    return 0


class _SweepPrinter:
    """One line per run event; the final ones numbered ``[k/N]``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.ended = 0

    def __call__(self, event: SweepEvent) -> None:
        width = 2 * len(str(self.total)) + 3
        if event.kind in ("started", "submitted"):
            prefix = " " * width
        else:
            self.ended += 1
            prefix = f"[{self.ended}/{self.total}]".rjust(width)
        print(f"{prefix} {event.kind:<11} {event.spec.run_dir}{_sweep_detail(event)}", flush=True)


def _sweep_detail(event: SweepEvent) -> str:
    kind, log = event.kind, event.spec.log_path
    if kind == "started":
        return f" on {event.slot}" + (" (resuming)" if event.resumed else "")
    if kind == "finished":
        metric = f", {event.metric[0]} {event.metric[1]:.2f}" if event.metric else ""
        return f" in {event.wall_s:.0f} s{metric}"
    if kind in ("failed", "interrupted"):
        code = f"exit {event.returncode}" if event.returncode is not None else event.detail
        return f": {code}; log {log}"
    return f": {event.detail}" if event.detail else ""


def _sweep_problems(problems: list[SweepEvent]) -> int:
    """List the runs that are not done (with their logs); the exit status."""
    if not problems:
        return 0
    print(f"{len(problems)} run(s) not done:")
    for event in problems:
        logged = event.kind in ("failed", "interrupted") and event.spec.log_path.is_file()
        where = f"log {event.spec.log_path}" if logged else event.detail
        print(f"  {event.kind:<11} {event.spec.run_dir}  {where}".rstrip())
    if any(event.kind == "conflict" for event in problems):
        print("a conflicting folder holds another recipe: --out DIR runs the sweep elsewhere")
    return 1
