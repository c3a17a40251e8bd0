"""What the CLI shows a person: a tqdm bar per pass on a terminal, one line per epoch always."""

from __future__ import annotations

import os
import sys
from numbers import Real
from typing import Any, TextIO

from tqdm import tqdm

from ndkd.progress import Progress


def interactive(stream: TextIO) -> bool:
    """A progress bar only on a real terminal, never in CI logs."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty()) and not os.environ.get("CI")


def _number(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    return None


def epoch_summary(record: dict[str, Any], epochs: int | None = None) -> str:
    """One line: epoch, losses, lr, accuracy, feature norms, speed.

    Only the entries present in ``record`` are shown, in that order; a full classification
    record reads ``epoch 3/10  loss 1.2345 (ce 0.9 ...)  lr 0.1  train 55.00%  test 50.00%
    top-5 80.00%  |s| 5.00 |t| 6.00  12.3s 4000 img/s``.
    """
    parts: list[str] = []
    epoch = record.get("epoch")
    if epoch is not None:
        parts.append(f"epoch {epoch}/{epochs}" if epochs is not None else f"epoch {epoch}")
    terms = " ".join(
        f"{key[5:]} {value:.4f}"
        for key, value in record.items()
        if key.startswith("loss/") and _number(record, key) is not None
    )
    loss = _number(record, "loss")
    if loss is not None:
        parts.append(f"loss {loss:.4f} ({terms})" if terms else f"loss {loss:.4f}")
    elif terms:
        parts.append(f"loss ({terms})")
    lr = _number(record, "lr")
    if lr is not None:
        parts.append(f"lr {lr:.4g}")
    train = _number(record, "train_top1")
    if train is not None:
        parts.append(f"train {train:.2f}%")
    precision, recall = _number(record, "train_precision"), _number(record, "train_recall")
    if precision is not None and recall is not None:
        parts.append(f"train P {precision:.1f}% R {recall:.1f}%")
    test = evaluation_summary(record)
    if test:
        parts.append(test)
    for key in record:
        if key.startswith("test_") and key not in _SHOWN_TEST_KEYS and not _detail(key):
            value = _number(record, key)
            if value is not None:
                parts.append(f"{key[5:]} {value:.4g}")
    for group in (
        (("student_emb_norm", "|s| {:.2f}"), ("teacher_emb_norm", "|t| {:.2f}")),
        (("epoch_time_s", "{:.1f}s"), ("images_per_s", "{:.0f} img/s")),
    ):
        shown = [form.format(v) for key, form in group if (v := _number(record, key)) is not None]
        if shown:
            parts.append(" ".join(shown))
    return "  ".join(parts)


_SHOWN_TEST_KEYS = ("test_top1", "test_top5", "test_map", "test_ap", "test_samples")


def _detail(key: str) -> bool:
    """Per-class values (``test_ap/<class>``) and the secondary mAP definitions stay in
    ``metrics.jsonl``, off the epoch line."""
    return "/" in key or key.startswith("test_map_")


def evaluation_summary(record: dict[str, Any]) -> str:
    """``test top-1 71.20% top-5 90.10%`` (classification), ``test mAP 90.14%``
    (multi-label) or ``test AP 38.20%`` (detection); empty when the record holds none."""
    test = []
    for key, form in (
        ("test_top1", "top-1 {:.2f}%"),
        ("test_top5", "top-5 {:.2f}%"),
        ("test_map", "mAP {:.2f}%"),
        ("test_ap", "AP {:.2f}%"),
    ):
        if (value := _number(record, key)) is not None:
            test.append(form.format(value))
    return "test " + " ".join(test) if test else ""


def _label(event: Progress) -> str:
    if event.epoch is None:
        return event.phase
    of = f"/{event.epochs}" if event.epochs is not None else ""
    return f"{event.phase} epoch {event.epoch}{of}"


def _postfix(values: dict[str, float]) -> dict[str, str]:
    return {
        key: f"{value:.4f}" if isinstance(value, float) else str(value)
        for key, value in values.items()
    }


class ProgressPrinter:
    """The :data:`ndkd.progress.ProgressFn` of the CLI: call it with each
    :class:`~ndkd.progress.Progress` event.

    On a terminal (``stream``, stderr by default, not under ``CI``) each pass gets a tqdm bar
    (``phase`` and ``epoch e/E``, ``done``/``total``, ``values`` as postfix); ``bar`` says
    whether bars are drawn, so callers can skip per-step reports when they are not. An event
    with a ``record`` closes the bar and prints :func:`epoch_summary` to ``lines`` (stdout),
    terminal or not. ``enabled=False`` (non-main ranks) shows nothing. Call :meth:`close` when
    done (it removes a bar left open by a pass whose total was unknown). ``mininterval``: the
    least seconds between redraws (tqdm's).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        lines: TextIO | None = None,
        enabled: bool = True,
        mininterval: float = 0.1,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.lines = lines if lines is not None else sys.stdout
        self.enabled = enabled
        self.mininterval = mininterval
        self.bar = enabled and interactive(self.stream)
        self._tqdm: tqdm | None = None
        self._key: tuple[str, int | None] | None = None

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        if event.record is not None:
            self.close()
            line = epoch_summary(event.record, event.epochs)
            print(line, file=self.lines, flush=True)
            return
        if not self.bar:
            return
        key = (event.phase, event.epoch)
        bar = self._tqdm
        if bar is None or key != self._key or event.done < bar.n:
            self.close()
            bar = self._tqdm = tqdm(
                total=event.total,
                desc=_label(event),
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=self.mininterval,
            )
            self._key = key
        if event.total != bar.total:
            bar.total = event.total
        if event.values:
            bar.set_postfix(_postfix(event.values), refresh=False)
        bar.update(event.done - bar.n)
        if event.epoch is None and event.total is not None and event.done >= event.total:
            self.close()  # a pass without epochs ends with its last unit

    def close(self) -> None:
        """Remove the open bar, if any."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
            self._key = None
