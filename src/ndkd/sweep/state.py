"""What a planned run's folder holds, read without writing: ``new``, ``resume``, ``done``,
``busy`` (another process trains it) or ``conflict`` (it holds a different recipe)."""

from __future__ import annotations

import dataclasses
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ndkd.analysis.runs import RunReadError, read_run
from ndkd.config import ConfigError, load_config, resume_conflicts
from ndkd.engine.run_lock import LOCK_NAME, pid_alive
from ndkd.experiment.run_folder import CONFIG, RUN_FILES
from ndkd.sweep.plan import RunSpec

StateKind = Literal["new", "resume", "done", "busy", "conflict"]


@dataclass(frozen=True)
class RunState:
    """A run folder's state; ``detail`` says who holds a busy folder, or which keys of a
    conflicting one differ."""

    kind: StateKind
    detail: str = ""


def read_state(spec: RunSpec) -> RunState:
    """The state of ``spec``'s folder for ``spec.config``.

    ``done`` when ``metrics.jsonl`` records every epoch (or step) ``spec.config`` plans and
    the stored ``config.yaml`` may be continued by it (:func:`ndkd.config.resume_conflicts`:
    only speed and output keys differ, or ``train.epochs`` grew, which makes it ``resume``).
    """
    run_dir = spec.run_dir
    holder = lock_holder(run_dir)
    if holder is not None:
        return RunState("busy", holder)
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        return RunState("new")
    if (run_dir / CONFIG).is_file():
        try:
            stored = load_config(run_dir / CONFIG).to_dict()
        except (ConfigError, OSError) as error:
            return RunState("conflict", f"unreadable {CONFIG}: {error}")
        conflicts = resume_conflicts(stored, spec.config.to_dict())
        if conflicts:
            return RunState("conflict", "differs in " + ", ".join(conflicts))
    try:
        run = read_run(run_dir)
    except RunReadError:
        return RunState("resume")
    planned = dataclasses.replace(run, config=spec.config)  # complete by the new plan
    return RunState("done" if planned.complete else "resume")


def lock_holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir/.lock`` when it is live (any lock of another host, or a running
    process of this one; an unreadable lock counts as held); ``None`` when there is none, or
    when it is stale (a dead process of this host: the next run takes it over)."""
    path = run_dir / LOCK_NAME
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"an unreadable {path}"
    pid, host = (holder.get("pid"), holder.get("host")) if isinstance(holder, dict) else (0, 0)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(host, str):
        return f"an unreadable {path}"
    if host == socket.gethostname() and not pid_alive(pid):
        return None
    return f"pid {pid} on {host} since {holder.get('started', '?')}"
