"""Runs are never lost: SIGKILL at any moment, --resume, and the final metrics equal an
uninterrupted run's (CPU, same seed)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time

import pytest

from helpers import ndkd_command, run_ndkd, write_kdpp_config

# Measurements of the machine, not of the run: they differ between identical runs.
MEASURED_KEYS = {"epoch_time_s", "images_per_s", "peak_memory_mb"}


def comparable(path):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in MEASURED_KEYS} for r in records]


def wait_for_lines(path, count, process, limit=120.0):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        if process.poll() is not None:
            pytest.fail(f"training ended early: {process.stderr.read()}")
        time.sleep(0.02)
    pytest.fail("training made no progress")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits_teacher):
    folder = tmp_path_factory.mktemp("reference")
    config = write_kdpp_config(folder, digits_teacher, epochs=4)
    result = run_ndkd("train", "-c", str(config))
    assert result.returncode == 0, result.stderr
    return comparable(folder / "run" / "metrics.jsonl")


def test_resume_after_sigkills_equals_uninterrupted(tmp_path, digits_teacher, uninterrupted):
    """Killed twice (early in epoch 2, late in epoch 3), resumed each time."""
    config = write_kdpp_config(tmp_path, digits_teacher, epochs=4)
    metrics = tmp_path / "run" / "metrics.jsonl"
    for completed, delay in [(1, 0.05), (2, 0.4)]:
        resume = ["--resume"] if completed > 1 else []
        process = subprocess.Popen(
            ndkd_command("train", "-c", str(config), *resume),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for_lines(metrics, completed, process)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL, "the run finished before the kill"
    refused = run_ndkd("train", "-c", str(config))
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = run_ndkd("train", "-c", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert comparable(metrics) == uninterrupted
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_eval_reproduces_the_last_epoch(tmp_path, digits_teacher):
    config = write_kdpp_config(tmp_path, digits_teacher, epochs=1)
    assert run_ndkd("train", "-c", str(config)).returncode == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    result = run_ndkd("eval", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert f"test top-1 {record['test_top1']:.2f}%" in result.stdout
    best = run_ndkd("eval", "-c", str(config), f"checkpoint={tmp_path / 'run' / 'best.pt'}")
    assert best.returncode == 0 and "test top-1" in best.stdout


def test_bf16_autocast_and_channels_last_train(tmp_path, digits_teacher):
    config = write_kdpp_config(tmp_path, digits_teacher, epochs=1)
    result = run_ndkd("train", "-c", str(config), "train.amp=bf16", "train.channels_last=true")
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert all(math.isfinite(record[k]) for k in ("loss/ce", "loss/kd", "loss/nd", "test_top1"))
