"""The CLI's progress display: tqdm bars on a terminal, one summary line per epoch always."""

from __future__ import annotations

import io

import pytest

from ndkd.console import ProgressPrinter, epoch_summary, evaluation_summary
from ndkd.progress import Progress

FULL = {
    "epoch": 2,
    "loss": 1.5,
    "loss/ce": 1.0,
    "loss/kd": 0.5,
    "lr": 0.05,
    "train_top1": 61.25,
    "test_top1": 58.5,
    "test_top5": 85.125,
    "student_emb_norm": 4.5,
    "teacher_emb_norm": 6.25,
    "epoch_time_s": 12.34,
    "images_per_s": 4051.6,
}


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch) -> TTY:
    monkeypatch.delenv("CI", raising=False)
    return TTY()


def train_events(epoch: int = 2, steps: int = 3) -> list[Progress]:
    events = [
        Progress("train", step, steps, epoch, 5, {"ce": 1.0 / step, "kd": 0.5})
        for step in range(1, steps + 1)
    ]
    return events + [Progress("train", steps, steps, epoch, 5, record=FULL)]


def test_full_record_line_format():
    assert epoch_summary(FULL, 5) == (
        "epoch 2/5  loss 1.5000 (ce 1.0000 kd 0.5000)  lr 0.05  train 61.25%  "
        "test top-1 58.50% top-5 85.12%  |s| 4.50 |t| 6.25  12.3s 4052 img/s"
    )


def test_not_a_terminal_no_bar_but_epoch_lines():
    stream, lines = io.StringIO(), io.StringIO()
    printer = ProgressPrinter(stream, lines)
    assert printer.bar is False
    for event in train_events():
        printer(event)
    printer(Progress("centers", 1, 2))
    printer.close()
    assert stream.getvalue() == ""
    assert lines.getvalue() == epoch_summary(FULL, 5) + "\n"


def test_ci_disables_the_bar(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert ProgressPrinter(TTY(), io.StringIO()).bar is False


def test_terminal_draws_a_tqdm_bar(terminal):
    lines = io.StringIO()
    printer = ProgressPrinter(terminal, lines, mininterval=0)
    assert printer.bar is True
    for event in train_events()[:-1]:
        printer(event)
    drawn = terminal.getvalue()
    assert "train epoch 2/5" in drawn
    assert "3/3" in drawn and "kd=0.5000" in drawn
    printer(train_events()[-1])  # the record closes the bar and prints the line
    assert printer._tqdm is None
    assert lines.getvalue() == epoch_summary(FULL, 5) + "\n"


def test_centers_pass_with_total(terminal):
    printer = ProgressPrinter(terminal, io.StringIO(), mininterval=0)
    for done in range(1, 5):
        printer(Progress("centers", done, 4))
    assert printer._tqdm is None  # closed at done == total
    drawn = terminal.getvalue()
    assert "centers" in drawn and "4/4" in drawn and "100%" in drawn


def test_pass_without_total(terminal):
    printer = ProgressPrinter(terminal, io.StringIO(), mininterval=0)
    for done in range(1, 8):
        printer(Progress("features", done))
    assert printer._tqdm is not None and printer._tqdm.n == 7
    assert "features" in terminal.getvalue() and "7it" in terminal.getvalue()
    printer(Progress("centers", 1, 2))  # a new pass replaces the bar
    assert printer._key == ("centers", None) and printer._tqdm.n == 1
    printer.close()
    assert printer._tqdm is None


def test_new_epoch_or_restarted_pass_opens_a_new_bar(terminal):
    printer = ProgressPrinter(terminal, io.StringIO(), mininterval=0)
    printer(Progress("train", 2, 3, 1, 2))
    first = printer._tqdm
    printer(Progress("train", 1, 3, 2, 2))
    assert printer._tqdm is not first and printer._tqdm.n == 1
    second = printer._tqdm
    printer(Progress("train", 1, 3, 2, 2))  # same pass, no progress: same bar
    assert printer._tqdm is second
    printer(Progress("demo", 3, None))
    printer(Progress("demo", 1, None))  # counting again from 1: a new pass
    assert printer._tqdm.n == 1
    printer.close()


def test_disabled_prints_nothing(terminal):
    lines = io.StringIO()
    printer = ProgressPrinter(terminal, lines, enabled=False)
    assert printer.bar is False
    for event in train_events():
        printer(event)
    assert terminal.getvalue() == "" and lines.getvalue() == ""


@pytest.mark.parametrize(
    ("record", "epochs", "line"),
    [
        ({"epoch": 1}, 3, "epoch 1/3"),
        ({"epoch": 4}, None, "epoch 4"),
        ({"epoch": 1, "loss": 2.0}, 3, "epoch 1/3  loss 2.0000"),
        ({"epoch": 1, "loss/det_cls": 0.25}, 3, "epoch 1/3  loss (det_cls 0.2500)"),
        (
            {"epoch": 1, "loss": 1.0, "loss/ce": 1.0, "lr": 0.1, "test_top1": 40.0},
            2,
            "epoch 1/2  loss 1.0000 (ce 1.0000)  lr 0.1  test top-1 40.00%",
        ),
        ({"epoch": 1, "test_top5": 90.0}, 2, "epoch 1/2  test top-5 90.00%"),
        ({"epoch": 1, "test_map": 0.4567}, 2, "epoch 1/2  test mAP 0.46%"),
        ({"epoch": 1, "student_emb_norm": 3.0}, 2, "epoch 1/2  |s| 3.00"),
        ({"epoch": 1, "images_per_s": 99.6}, 2, "epoch 1/2  100 img/s"),
        ({"epoch": 1, "epoch_time_s": 2.25, "note": "x"}, 2, "epoch 1/2  2.2s"),
    ],
)
def test_records_missing_keys(record, epochs, line):
    assert epoch_summary(record, epochs) == line


def test_printer_prints_partial_record():
    lines = io.StringIO()
    printer = ProgressPrinter(io.StringIO(), lines)
    printer(Progress("train", 5, 5, 1, 1, record={"epoch": 1, "loss": 0.5}))
    assert lines.getvalue() == "epoch 1/1  loss 0.5000\n"


def test_multi_label_epoch_line_keeps_per_class_values_off_the_screen():
    record = {
        "epoch": 2,
        "train_precision": 81.25,
        "train_recall": 60.5,
        "test_map": 90.14,
        "test_map_11point": 88.0,
        "test_cf1": 85.0,
        "test_ap/person": 97.0,
        "test_samples": 4952,
    }
    line = epoch_summary(record, 60)
    assert "train P 81.2% R 60.5%" in line and "test mAP 90.14%" in line
    assert "cf1 85" in line and "person" not in line and "11point" not in line
    assert evaluation_summary({"test_map": 90.14}) == "test mAP 90.14%"
