"""The run-folder lock: one process tree writes a run folder at a time.

``run_dir/.lock`` is created atomically (``O_CREAT | O_EXCL``) and holds JSON
``{"pid", "host", "started"}``. A lock left by a dead process *of this host* is stale and is
taken over (with a warning); a lock of another host is never taken over automatically (this
host cannot tell whether that process lives), and an unreadable lock file counts as held.

Under ``torch.distributed`` only rank 0 should lock (the other ranks are its own process
tree and write nothing to the folder); that decision is the caller's. Hosts are told apart by
``socket.gethostname()``: containers that share a run folder must not share a host name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
GUARD_NAME = ".lock.takeover"


class RunLockedError(ValueError):
    """The run folder is held by another process (or its lock file cannot be read)."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (also when another user owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


class RunLock:
    """Holds ``run_dir/.lock`` for this process: ``with RunLock(run_dir): ...`` or
    :meth:`acquire` then :meth:`release`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._owner: dict[str, Any] | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._owner is not None

    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one of this host; raise :class:`RunLockedError`
        when the folder is in use."""
        if self._owner is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                return self
            holder = self._read()
            if holder is None:
                if not self.path.exists():
                    continue  # released meanwhile: try again
                raise RunLockedError(
                    f"output_dir '{self.run_dir}' is locked by {self.path}, which cannot be "
                    "read; if no run uses this folder, delete that file"
                )
            if holder["host"] != socket.gethostname() or pid_alive(holder["pid"]):
                raise RunLockedError(self._in_use(holder))
            if self._take_over(holder):
                return self
        raise RunLockedError(f"output_dir '{self.run_dir}': could not take {self.path}")

    def release(self) -> None:
        """Remove the lock file if it is still ours (a no-op when not held, or in a forked
        child of the holder)."""
        owner, self._owner = self._owner, None
        if owner is None or owner["pid"] != os.getpid():
            return
        if self._read(retries=0) == owner:
            self.path.unlink(missing_ok=True)
        else:
            log.warning("%s is no longer this process's lock; left in place", self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _create(self) -> bool:
        """Create the lock file if none exists (atomically); whether we now hold it."""
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(owner).encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self._owner = owner
        return True

    def _read(self, retries: int = 3) -> dict[str, Any] | None:
        """The lock's holder, or ``None`` when the file is missing or garbled (after a few short
        waits, since a holder writes its JSON just after creating the file)."""
        for attempt in range(retries + 1):
            try:
                holder = json.loads(self.path.read_text())
            except FileNotFoundError:
                return None
            except (OSError, ValueError):
                holder = None
            if (
                isinstance(holder, dict)
                and isinstance(holder.get("pid"), int)
                and not isinstance(holder["pid"], bool)
                and holder["pid"] > 0
                and isinstance(holder.get("host"), str)
            ):
                return holder
            if attempt < retries:
                time.sleep(0.05)
        return None

    def _in_use(self, holder: dict[str, Any]) -> str:
        message = (
            f"output_dir '{self.run_dir}' is in use by pid {holder['pid']} on host "
            f"{holder['host']} (started {holder.get('started', '?')}); wait for it or choose "
            "another output_dir"
        )
        if holder["host"] != socket.gethostname():
            message += f" (if that run is dead, delete {self.path})"
        return message

    def _take_over(self, stale: dict[str, Any]) -> bool:
        """Replace the stale lock ``stale`` by ours, unless another process replaced it
        meanwhile; whether we now hold the lock.

        Check and removal happen under an exclusive ``flock`` on a guard file, so of several
        processes taking over the same stale lock one removes it and creates its own; the
        others then find that new, live lock. The guard file is never deleted (deleting a
        file others may be waiting to lock would let two of them in).
        """
        try:
            import fcntl
        except ImportError:  # no flock (Windows): a check then a removal, very narrow race
            fcntl = None  # type: ignore[assignment]
        guard = os.open(self.run_dir / GUARD_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(guard, fcntl.LOCK_EX)
            if self._read() == stale:
                log.warning(
                    "output_dir '%s': taking over the stale lock of pid %d (started %s), "
                    "which no longer runs on this host",
                    self.run_dir,
                    stale["pid"],
                    stale.get("started", "?"),
                )
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                return self._create()
            return False
        finally:
            os.close(guard)  # also releases the flock
