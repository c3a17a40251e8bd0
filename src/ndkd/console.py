"""What the CLI shows a person: a progress bar on a terminal, one line per epoch always."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from ndkd.engine import Progress


def interactive(stream: TextIO) -> bool:
    """A progress bar only on a real terminal, never in CI logs."""
    return stream.isatty() and not os.environ.get("CI")


def epoch_summary(record: dict[str, Any], epochs: int) -> str:
    """One line: epoch, losses, lr, accuracy, feature norms, speed."""
    terms = " ".join(
        f"{key[5:]} {value:.4f}" for key, value in record.items() if key.startswith("loss/")
    )
    parts = [
        f"epoch {record['epoch']}/{epochs}",
        f"loss {record['loss']:.4f} ({terms})",
        f"lr {record['lr']:.4g}",
        f"train {record['train_top1']:.2f}%",
    ]
    if "test_top1" in record:
        parts.append(f"test {record['test_top1']:.2f}% top-5 {record['test_top5']:.2f}%")
    norms = f"|s| {record['student_emb_norm']:.2f}"
    if "teacher_emb_norm" in record:
        norms += f" |t| {record['teacher_emb_norm']:.2f}"
    parts += [norms, f"{record['epoch_time_s']:.1f}s {record['images_per_s']:.0f} img/s"]
    return "  ".join(parts)


class ProgressPrinter:
    """Progress callback for :class:`ndkd.engine.Trainer` (rank 0 only): the bar is drawn on
    ``stream`` (stderr) when it is a terminal; the epoch lines go to ``lines`` (stdout)."""

    def __init__(
        self, stream: TextIO = sys.stderr, lines: TextIO = sys.stdout, enabled: bool = True
    ) -> None:
        self.stream = stream
        self.lines = lines
        self.enabled = enabled
        self.bar = interactive(stream)

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        if event.record is not None:
            self._clear()
            print(epoch_summary(event.record, event.epochs), file=self.lines, flush=True)
        elif self.bar:
            self._draw(
                f"epoch {event.epoch + 1}/{event.epochs}",
                event.step,
                event.steps,
                " ".join(f"{k} {v:.4f}" for k, v in event.losses.items()),
            )

    def steps(self, label: str):
        """A ``(done, total)`` callback drawing a bar labelled ``label``."""

        def report(done: int, total: int | None) -> None:
            if self.enabled and self.bar:
                self._draw(label, done, total or done, "")
                if total is not None and done == total:
                    self._clear()

        return report

    def _draw(self, label: str, done: int, total: int, tail: str) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{label} [{bar}] {done}/{total} {tail}"[:160])
        self.stream.flush()

    def _clear(self) -> None:
        if self.bar:
            self.stream.write("\r\033[K")
