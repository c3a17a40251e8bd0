"""The optional TensorBoard sink: scalars per epoch, restart purging, missing package."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from ndkd.engine.tensorboard import MISSING, TensorBoardSink  # noqa: E402


def record(epoch: int, shift: float = 0.0) -> dict:
    return {
        "epoch": epoch,
        "loss": 2.0 / epoch + shift,
        "loss/kd": 0.5 / epoch + shift,
        "lr": 0.1 * epoch,
        "test_top1": 10.0 * epoch + shift,
        "note": "text is skipped",
        "best": True,
    }


def read(folder) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def test_three_records_read_back(tmp_path):
    sink = TensorBoardSink(tmp_path / "tensorboard")
    for epoch in (1, 2, 3):
        sink.append(record(epoch))
    sink.close()
    scalars = read(tmp_path / "tensorboard")
    assert set(scalars) == {"loss", "loss/kd", "lr", "test_top1"}
    for tag in scalars:
        expected = [(epoch, record(epoch)[tag]) for epoch in (1, 2, 3)]
        assert [step for step, _ in scalars[tag]] == [1, 2, 3]
        assert [value for _, value in scalars[tag]] == pytest.approx(
            [value for _, value in expected]
        )


def test_resume_with_purge_step_replaces_rerun_epochs(tmp_path):
    folder = tmp_path / "tensorboard"
    first = TensorBoardSink(folder)
    for epoch in (1, 2, 3):  # killed after logging epoch 3, checkpoint of epoch 2 survived
        first.append(record(epoch))
    first.close()
    # TensorBoard reads event files in name order (time in seconds, host, pid, counter): give
    # the first session's file an earlier time, as a real restart would have.
    (old,) = folder.glob("events.out.tfevents.*")
    old.rename(folder / ("events.out.tfevents.0000000001." + old.name.split(".", 4)[4]))
    second = TensorBoardSink(folder, purge_step=3)
    for epoch in (3, 4):
        second.append(record(epoch, shift=100.0))
    second.close()
    loss = read(folder)["test_top1"]
    assert [step for step, _ in loss] == [1, 2, 3, 4]
    assert [value for _, value in loss] == pytest.approx([10.0, 20.0, 130.0, 140.0])


def test_record_without_epoch_is_refused(tmp_path):
    sink = TensorBoardSink(tmp_path)
    with pytest.raises(ValueError, match="epoch"):
        sink.append({"loss": 1.0})
    sink.close()


def test_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ValueError) as error:
        TensorBoardSink(tmp_path / "tensorboard")
    assert str(error.value) == MISSING
    assert "pip install 'ndkd[tensorboard]'" in str(error.value)
    assert not (tmp_path / "tensorboard").exists()
