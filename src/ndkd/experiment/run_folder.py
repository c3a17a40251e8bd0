"""The run folder's life: which states may be started or resumed, the lock held while a run
writes, and the resume check of the stored config against the new one.

A folder is in one of these states:

- empty or absent: a fresh start creates it; ``--resume`` is refused;
- *started*: ``config.yaml`` but no checkpoint and no finished epoch (the run died before
  its first checkpoint): a fresh start or ``--resume`` starts it from epoch 0 (``--resume``
  after checking the config against ``config.yaml``);
- *trained*: ``last.pt`` (and ``metrics.jsonl``, ``best.pt``): only ``--resume`` continues
  it, after checking the config against the checkpoint's (see
  :func:`ndkd.config.resume_conflicts`); a fresh start is refused;
- anything else that holds run files (e.g. ``best.pt`` alone, or metrics without a
  checkpoint) is refused both ways, naming what it holds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ndkd.atomic import atomic_write, remove_stale_temp_files
from ndkd.config import RunConfig, dump_config, from_dict, resume_conflicts
from ndkd.engine import BEST, LAST, METRICS
from ndkd.engine.checkpoint import load_checkpoint
from ndkd.engine.run_lock import RunLock

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
HISTORY = "resume.log"
RUN_FILES = (CONFIG, LAST, BEST, METRICS)


class RunFolderError(ValueError):
    """The output folder cannot be used as asked (another run, nothing to resume, a
    changed config)."""


@dataclass
class RunPlan:
    """What :func:`plan_run` decided: the folder, and the checkpoint to resume from (``None``
    to start at epoch 0)."""

    run_dir: Path
    checkpoint: dict[str, Any] | None
    epochs_before: int | None = None
    """The stored ``train.epochs`` when ``--resume`` raises it (logged in the folder)."""


def _metrics_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def plan_run(config: RunConfig, resume: bool) -> RunPlan:
    """Check ``config.output_dir`` for a fresh start or a resume; read-only.

    Raises:
        RunFolderError: as the module docstring says, with the files found and what to do.
    """
    run_dir = Path(config.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"output_dir {str(run_dir)!r} is a file; expected a folder")
    has = {name: (run_dir / name).is_file() for name in RUN_FILES}
    finished_epochs = _metrics_lines(run_dir / METRICS)
    held = [name for name in RUN_FILES if has[name]]
    if has[LAST]:
        if not resume:
            raise RunFolderError(
                f"output_dir {str(run_dir)!r} already holds a run ({', '.join(held)}); pass "
                "--resume to continue it, or choose another output_dir"
            )
        state = load_checkpoint(run_dir / LAST)
        started = int(state["epoch"]) + bool(state.get("step"))  # a mid-epoch one counts
        before = _check_resume(state.get("config", {}), config, started, run_dir / LAST)
        return RunPlan(run_dir, state, before)
    if has[BEST] or finished_epochs:
        raise RunFolderError(
            f"output_dir {str(run_dir)!r} holds {', '.join(held)} but no {LAST}: nothing to "
            "resume from, and a fresh start would overwrite them; choose another output_dir "
            "or move those files away"
        )
    if has[CONFIG]:
        if resume:
            stored = _read_yaml(run_dir / CONFIG)
            _check_resume(stored, config, 0, run_dir / CONFIG)
        log.warning(
            "%s holds a run that stopped before its first checkpoint: starting it at epoch 0",
            run_dir,
        )
    elif resume:
        raise RunFolderError(
            f"--resume: no checkpoint to resume from: {str(run_dir)!r} holds no run (no "
            f"{LAST}, no {CONFIG})"
        )
    return RunPlan(run_dir, None)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        stored = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise RunFolderError(f"{path}: not a readable run config ({error})") from error
    if not isinstance(stored, dict):
        raise RunFolderError(f"{path}: not a run config (expected a mapping)")
    return stored


def _check_resume(
    stored: dict[str, Any], config: RunConfig, epochs_done: int, source: Path
) -> int | None:
    """Refuse a resume whose config differs from ``stored`` in any key that is not safe to
    change; return the stored ``train.epochs`` when the new config raises it."""
    try:
        old = from_dict(stored).to_dict()
    except ValueError as error:
        raise RunFolderError(f"{source}: its stored config is not valid now ({error})") from error
    new = config.to_dict()
    conflicts = resume_conflicts(old, new)
    if conflicts:
        raise RunFolderError(
            f"--resume: the config differs from the run's ({source}) in "
            f"{', '.join(conflicts)}; these cannot change within a run (start a new "
            "output_dir, or resume with the original values)"
        )
    if not config.train.iterations and config.train.epochs < epochs_done:  # else unused
        raise RunFolderError(
            f"--resume: train.epochs={config.train.epochs} is fewer than the {epochs_done} "
            "epochs the run has already finished or begun"
        )
    before = old["train"]["epochs"]
    return before if before != config.train.epochs else None


class OpenRun:
    """The run folder while a run writes it: locked, stale temp files gone, config stored.

    Only the main process opens it (the others write nothing to the folder).
    """

    def __init__(self, plan: RunPlan, config: RunConfig) -> None:
        self.plan = plan
        self.config = config
        self.lock = RunLock(plan.run_dir)
        self.created = False

    def __enter__(self) -> OpenRun:
        run_dir = self.plan.run_dir
        self.created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
            if self.plan.checkpoint is None and (run_dir / LAST).exists():
                # Another run wrote its first checkpoint between the plan and the lock.
                raise RunFolderError(
                    f"output_dir {str(run_dir)!r} now holds a run ({LAST}); choose another "
                    "output_dir or pass --resume"
                )
        except BaseException:
            self._abandon()
            raise
        removed = remove_stale_temp_files(run_dir, RUN_FILES)
        if removed:
            log.warning("removed %d partial file(s) of an interrupted write", len(removed))
        return self

    def write_config(self) -> None:
        """Store the resolved config (and, on a resume that raised ``train.epochs``, say so
        in ``resume.log``)."""
        run_dir = self.plan.run_dir
        text = dump_config(self.config)
        atomic_write(run_dir / CONFIG, lambda tmp: tmp.write_text(text))
        if self.plan.epochs_before is not None:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            line = (
                f"{stamp} resumed with train.epochs {self.plan.epochs_before} -> "
                f"{self.config.train.epochs}\n"
            )
            with open(run_dir / HISTORY, "a") as handle:
                handle.write(line)
            log.info(
                "train.epochs raised from %d to %d",
                self.plan.epochs_before,
                self.config.train.epochs,
            )

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        """A small JSON fact file of the run (e.g. the data set's sizes)."""
        text = json.dumps(payload, indent=2) + "\n"
        atomic_write(self.plan.run_dir / name, lambda tmp: tmp.write_text(text))

    def __exit__(self, *exc_info: object) -> None:
        self.lock.release()

    def _abandon(self) -> None:
        if self.lock.held:
            self.lock.release()
        if self.created and not any(self.plan.run_dir.iterdir()):
            self.plan.run_dir.rmdir()
