"""`ndkd sweep --executor slurm|submitit-local`: the same runs as submitit jobs, tested with
submitit's local executor (no cluster needed), including a preemption and requeue."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

import ndkd.sweep
from helpers import run_ndkd
from ndkd import cli
from ndkd.analysis.runs import read_run
from ndkd.sweep import plan_sweep
from test_sweep import ONE_THREAD, write_config

submitit = pytest.importorskip("submitit")


def test_submitit_local_wait_runs_every_run(tmp_path):
    config = write_config(tmp_path, "a", "runs/a/seed{seed}")
    out = tmp_path / "out"
    result = run_ndkd(
        "sweep", str(config), "--seeds", "0", "1", "--out", str(out),
        "--executor", "submitit-local", "--wait", env=ONE_THREAD, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for seed in (0, 1):
        assert read_run(out / f"seed{seed}").complete
        assert f"submitted   {out / f'seed{seed}'}: job " in result.stdout
        assert f"finished    {out / f'seed{seed}'} in " in result.stdout
    assert (out / "slurm").is_dir() and not (tmp_path / "runs").exists()
    assert f"ndkd analyze {out}" in result.stdout


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_preempted_job_checkpoints_is_requeued_and_resumes(tmp_path):
    """SIGUSR2 to the job's task, as SLURM signals a job before preemption or its time limit:
    the task stops its run (SIGTERM: it checkpoints), submitit requeues it, and the requeued
    task resumes the run to the end. (``LocalJob._interrupt`` would signal submitit's
    controller, which does not forward SIGUSR2, so the signal goes to the task itself.)"""
    from ndkd.sweep.slurm import JobOptions, make_executor, submit

    epochs = 40
    config = write_config(tmp_path, "a", str(tmp_path / "run"), epochs=epochs)
    spec = plan_sweep([config], [0]).runs[0]
    executor = make_executor(tmp_path / "slurm", "local", JobOptions(time_min=10))
    _, jobs = submit([spec], executor, threads=1)
    job = jobs[0]
    metrics = spec.run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().strip()):  # an epoch done
        assert not job.done() and time.monotonic() < deadline, job.stderr()
        time.sleep(0.05)
    (task,) = _children(int(job.job_id))  # the controller's one task
    os.kill(task, signal.SIGUSR2)

    event = job.result()
    assert event.kind == "finished" and event.resumed, event
    log = spec.log_path.read_text()
    assert log.count("=== ") == 2 and " start on job " in log and " resume on job " in log
    assert "stopped by SIGTERM" in log
    epochs_logged = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert epochs_logged == list(range(1, epochs + 1))
    assert read_run(spec.run_dir).complete
    assert "Requeued job" in (job.stderr() or "") + (job.stdout() or "")


def test_slurm_without_submitit_says_what_to_install(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, "a", str(tmp_path / "runs/seed{seed}"))
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "ndkd.sweep.slurm", raising=False)
    monkeypatch.delattr(ndkd.sweep, "slurm", raising=False)
    status = cli.main(["sweep", str(config), "--seeds", "0", "--executor", "slurm"])
    error = capsys.readouterr().err
    assert status == 2 and "pip install 'ndkd[sweep]'" in error
    assert len(error.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a SLURM cluster is here")
def test_slurm_without_sbatch_is_one_line(tmp_path):
    config = write_config(tmp_path, "a", str(tmp_path / "runs/seed{seed}"))
    result = run_ndkd("sweep", str(config), "--seeds", "0", "--executor", "slurm")
    assert result.returncode == 2 and "sbatch not found" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()
