"""One run of a sweep: ``python -m ndkd train`` in a child process, its output appended to
``<run folder>/sweep.log``.

On Linux the child gets ``PR_SET_PDEATHSIG=SIGTERM``: when the sweep process dies (even by
SIGKILL) the child receives SIGTERM, checkpoints at its next step and exits, instead of
training on unattended. (The signal follows the *thread* that started the child, so start
children from a thread that lives as long as the sweep: the main thread.)
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ndkd.analysis.runs import TASK_METRICS, RunReadError, read_run
from ndkd.sweep.plan import RunSpec

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STOPPED_CODES = frozenset(
    code for signum in (signal.SIGINT, signal.SIGTERM) for code in (128 + signum, -signum)
)
"""Exit codes of a run stopped by a signal (``ndkd train`` exits 128 + signal after its
checkpoint; a child stopped before its loop dies of the signal itself)."""


@dataclass(frozen=True)
class Slot:
    """Where a run executes: ``gpu`` is its ``CUDA_VISIBLE_DEVICES`` (``""`` hides every GPU,
    ``None`` leaves the variable as it is); ``threads`` its CPU threads (``None``: as is)."""

    label: str
    gpu: str | None = None
    threads: int | None = None


def train_command(spec: RunSpec, resume: bool) -> list[str]:
    """The ``ndkd train`` command line of ``spec``."""
    command = [sys.executable, "-m", "ndkd", "train", "-c", str(spec.config_path)]
    return [*command, *spec.overrides, *(["--resume"] if resume else [])]


def slot_env(slot: Slot, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the slot's GPU and threads
    (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` already set in ``base`` win)."""
    env = dict(os.environ if base is None else base)
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
    if slot.threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, str(slot.threads))
    return env


@dataclass
class Running:
    """A started run: its process, and when it started (``time.monotonic``)."""

    spec: RunSpec
    slot: Slot
    process: subprocess.Popen
    started: float
    resumed: bool

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.started


def launch(spec: RunSpec, slot: Slot, resume: bool, cwd: Path | None = None) -> Running:
    """Start ``spec`` (``--resume`` when ``resume``), creating its folder, appending its
    stdout and stderr to ``spec.log_path`` after a header line."""
    command = train_command(spec, resume)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().astimezone().isoformat(timespec="seconds")
    with open(spec.log_path, "ab") as handle:
        action = "resume" if resume else "start"
        handle.write(f"=== {stamp} {action} on {slot.label}: {shlex.join(command)}\n".encode())
        handle.flush()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=slot_env(slot),
            cwd=cwd,
            preexec_fn=_die_with_parent(),
        )
    log.info("started %s (pid %d) on %s", spec.run_dir, process.pid, slot.label)
    return Running(spec, slot, process, time.monotonic(), resume)


def wait(running: Running, poll_s: float = 0.5) -> int:
    """Wait for the run's exit code by polling (a signal handler may then stop it safely:
    a blocking ``Popen.wait`` would hold the lock that ``Popen.wait`` in the handler needs)."""
    while running.process.poll() is None:
        time.sleep(poll_s)
    return running.process.returncode


def stop(running: Running, poll_s: float = 0.2) -> int:
    """Ask the run to stop (SIGTERM: it checkpoints at its next step) and wait for it."""
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
    return wait(running, poll_s)


def last_metric(run_dir: Path) -> tuple[str, float] | None:
    """The run's primary test metric in its last epoch, e.g. ``("test_top1", 70.12)``."""
    try:
        run = read_run(run_dir)
    except RunReadError:
        return None
    key = TASK_METRICS[run.config.task][0].key
    value = run.last(key)
    return None if value is None else (key, float(value))


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
