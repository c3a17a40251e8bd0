"""SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption notice) as a request to stop at the
next step boundary, instead of an exception thrown from wherever the signal lands."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """A stop signal ended the run at a step boundary; ``signum`` is the signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While entered, SIGINT and SIGTERM set :attr:`signum` instead of interrupting; a second
    SIGINT interrupts at once (``KeyboardInterrupt``). The previous handlers come back on
    exit. Outside the main thread (where Python delivers no signals) it does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._request) for s in STOP_SIGNALS}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def name(self) -> str:
        """The received signal's name (e.g. ``SIGTERM``)."""
        return signal.Signals(self.signum).name if self.signum else ""
