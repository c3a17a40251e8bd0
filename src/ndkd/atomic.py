"""Atomic file writes: a crash mid-write never leaves a truncated file at the target path."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    The temporary file lives in the target's folder (so the rename stays on one file system
    and is atomic), is flushed to disk before the rename, and is removed if ``write`` fails;
    an existing file at ``path`` stays intact until the rename succeeds.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def remove_stale_temp_files(folder: str | os.PathLike[str], names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``folder`` for the targets
    ``names`` (``.{name}.*.tmp``, e.g. after a kill mid-write); return the removed paths.

    Precondition: no process may be writing these targets now (call it while holding the run
    folder's lock, when a run starts or resumes); a live writer's temporary file would go too.
    Only regular files of exactly that form are touched, the ``*`` being ``mkstemp``'s random
    part (letters, digits, ``_``), so ``.last.pt.bak.x1.tmp`` is not a temporary of ``last.pt``.
    """
    base = Path(folder)
    names = list(names)
    if not base.is_dir() or not names:
        return []
    pattern = re.compile("|".join(rf"\.{re.escape(name)}\.[A-Za-z0-9_]+\.tmp" for name in names))
    removed = []
    for entry in sorted(base.iterdir()):
        if not pattern.fullmatch(entry.name):
            continue
        if entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted write", entry)
            removed.append(entry)
    return removed
