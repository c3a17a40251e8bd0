"""The run-folder lock: atomic creation, stale takeover on this host, refusals, a real race."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ndkd.engine.run_lock import RunLock, RunLockedError


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_lock(folder: Path, **holder) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    path.write_text(json.dumps(holder))
    return path


def test_acquire_and_release(tmp_path):
    folder = tmp_path / "run"
    lock = RunLock(folder).acquire()
    holder = json.loads((folder / ".lock").read_text())
    assert holder["pid"] == os.getpid()
    assert holder["host"] == socket.gethostname()
    assert holder["started"]
    assert lock.held
    lock.release()
    assert not (folder / ".lock").exists() and not lock.held
    lock.release()  # twice is harmless
    with RunLock(folder) as again:  # free again
        assert again.held and (folder / ".lock").exists()
    assert not (folder / ".lock").exists()


def test_second_acquire_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError) as error:
            RunLock(tmp_path).acquire()
    message = str(error.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert f"output_dir '{tmp_path}' is in use" in message
    assert "wait for it or choose another output_dir" in message
    assert isinstance(error.value, ValueError)


def test_stale_lock_of_this_host_taken_over(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid, host=socket.gethostname(), started="2024-01-01T00:00:00")
    with caplog.at_level(logging.WARNING, logger="ndkd.engine.run_lock"):
        with RunLock(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert f"stale lock of pid {pid}" in caplog.text
    assert not (tmp_path / ".lock").exists()


def test_lock_of_another_host_refused(tmp_path):
    path = write_lock(tmp_path, pid=dead_pid(), host="elsewhere-7", started="yesterday")
    with pytest.raises(RunLockedError) as error:
        RunLock(tmp_path).acquire()
    message = str(error.value)
    assert "on host elsewhere-7 (started yesterday)" in message
    assert f"delete {path}" in message
    assert path.exists()


@pytest.mark.parametrize(
    "content", ["not json", "", '{"pid": "12", "host": "h"}', '{"pid": 0, "host": "h"}', "[1]"]
)
def test_garbled_lock_refused(tmp_path, content):
    path = tmp_path / ".lock"
    path.write_text(content)
    with pytest.raises(RunLockedError, match="cannot be read") as error:
        RunLock(tmp_path).acquire()
    assert str(path) in str(error.value)
    assert path.read_text() == content


def test_release_leaves_a_lock_that_is_not_ours(tmp_path, caplog):
    lock = RunLock(tmp_path).acquire()
    other = write_lock(tmp_path, pid=1, host=socket.gethostname(), started="later")
    with caplog.at_level(logging.WARNING, logger="ndkd.engine.run_lock"):
        lock.release()
    assert other.exists() and "no longer this process's lock" in caplog.text


RACER = """
import sys, time
from pathlib import Path
from ndkd.engine.run_lock import RunLock, RunLockedError
folder, me = Path(sys.argv[1]), sys.argv[2]
(folder.parent / ("ready-" + me)).touch()
while not (folder.parent / "go").exists():
    time.sleep(0.002)
try:
    with RunLock(folder):
        print("won", flush=True)
        time.sleep(1.0)
except RunLockedError as error:
    print("refused:", error, flush=True)
"""


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_two_processes_race_one_wins(tmp_path, stale):
    folder = tmp_path / "run"
    if stale:
        write_lock(folder, pid=dead_pid(), host=socket.gethostname(), started="earlier")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(folder), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "racers did not start"
        assert all(racer.poll() is None for racer in racers), racers[0].communicate()
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outputs = [racer.communicate(timeout=120) for racer in racers]
    results = [out.strip() for out, _ in outputs]
    assert all(racer.returncode == 0 for racer in racers), outputs
    assert sorted(result.split(":")[0] for result in results) == ["refused", "won"], outputs
    assert "is in use by pid" in next(r for r in results if r.startswith("refused"))
    assert not (folder / ".lock").exists()
