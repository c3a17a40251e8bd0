"""Optional TensorBoard sink: each epoch record of ``metrics.jsonl`` as scalars.

Resuming: a restarted run appends a new event file to the same folder. Pass
``purge_step=`` the first epoch this session runs (1-based, as in ``metrics.jsonl``): the
writer then marks a restart, and TensorBoard hides every older event at that step or later,
so epochs logged by the killed session and run again now show once, with the new value.
Without ``purge_step`` those epochs would appear twice (TensorBoard draws both points).
"""

from __future__ import annotations

import logging
from numbers import Real
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MISSING = "log.tensorboard: true needs the tensorboard package: pip install 'ndkd[tensorboard]'"


class TensorBoardSink:
    """Writes every numeric value of an epoch record as a scalar (tag = key, such as
    ``loss/<term>`` or a test metric; step = ``record["epoch"]``) to event files in ``log_dir``.

    Raises ``ValueError`` when the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(MISSING) from None
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        if purge_step is not None:
            log.debug("TensorBoard: events from step %d on are replaced", purge_step)

    def append(self, record: dict[str, Any]) -> None:
        """Write one epoch record; non-numeric values (and ``epoch`` itself) are skipped."""
        epoch = record.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"a metrics record needs an integer 'epoch', got {epoch!r}")
        for key, value in record.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, Real):
                continue
            self._writer.add_scalar(key, float(value), global_step=epoch)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
