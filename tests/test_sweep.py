"""`ndkd sweep`: the plan (folders, refusals), each run folder's state, and the local queue
end to end on the bundled digits (tiny CE-only runs: a few seconds each)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ndkd_command, run_ndkd
from ndkd.analysis.runs import read_run
from ndkd.config import dump_config
from ndkd.experiment import plan_run
from ndkd.sweep import choose_slots, plan_sweep, read_state

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
"""The runs' environment: one thread each, so that they keep their pace on a busy machine
(OpenMP threads spin-wait when other processes take the cores)."""


def write_config(
    folder: Path, name: str, output_dir: str, epochs: int = 2, extra: str = ""
) -> Path:
    """A CE-only resnet8 run on digits (about 5 s on a CPU, most of it start-up)."""
    path = folder / f"{name}.yaml"
    path.write_text(f"""
seed: 0
device: cpu
output_dir: {output_dir}
data: {{name: digits}}
student: {{arch: resnet8}}
train: {{epochs: {epochs}, batch_size: 256, lr: 0.05, milestones: [1]}}
terms:
  - {{name: ce, weight: 1.0}}
{extra}""")
    return path


def fake_run(spec, epochs: int) -> None:
    """What a run that finished ``epochs`` epochs of ``spec`` leaves in its folder."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    (spec.run_dir / "config.yaml").write_text(dump_config(spec.config))
    lines = [json.dumps({"epoch": e, "test_top1": 50.0 + e}) for e in range(1, epochs + 1)]
    (spec.run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


# --- plan ----------------------------------------------------------------------------------


def test_out_rebases_below_the_common_parent(tmp_path):
    runs = tmp_path / "runs" / "cifar100"
    kd = write_config(tmp_path, "kd", f"{runs}/kd/r56_r20/seed{{seed}}")
    kdpp = write_config(tmp_path, "kdpp", f"{runs}/kd++/r56_r20/seed{{seed}}")

    plan = plan_sweep([kd, kdpp], [0, 1])
    assert plan.root == runs
    assert [(s.config_path.stem, s.seed) for s in plan.runs] == [
        ("kd", 0), ("kd", 1), ("kdpp", 0), ("kdpp", 1)
    ]  # fmt: skip

    out = tmp_path / "elsewhere"
    moved = plan_sweep([kd, kdpp], [0, 1], ["train.lr=0.1"], out=out)
    assert moved.root == out
    assert [s.run_dir for s in moved.runs] == [
        out / "kd/r56_r20/seed0",
        out / "kd/r56_r20/seed1",
        out / "kd++/r56_r20/seed0",
        out / "kd++/r56_r20/seed1",
    ]
    first = moved.runs[0]
    assert first.overrides == ("seed=0", "train.lr=0.1", f"output_dir={out}/kd/r56_r20/seed0")
    assert first.config.train.lr == 0.1 and first.config.seed == 0


def test_one_config_keeps_its_seed_folders_under_out(tmp_path):
    config = write_config(tmp_path, "a", "runs/a/seed{seed}")
    plan = plan_sweep([config], [3], out=tmp_path / "out")
    assert [s.run_dir for s in plan.runs] == [tmp_path / "out" / "seed3"]


def test_runs_sharing_a_folder_are_refused(tmp_path):
    fixed = write_config(tmp_path, "fixed", str(tmp_path / "runs/fixed"))
    with pytest.raises(ValueError, match=r"both write to .*put \{seed\} in its output_dir"):
        plan_sweep([fixed], [0, 1])
    other = write_config(tmp_path, "other", str(tmp_path / "runs/fixed"))
    with pytest.raises(ValueError, match="different output_dir"):
        plan_sweep([fixed, other], [0])
    with pytest.raises(ValueError, match="listed twice"):
        plan_sweep([fixed, fixed], [0])


def test_bad_input_is_refused_naming_it(tmp_path):
    good = write_config(tmp_path, "good", "runs/good/seed{seed}")
    broken = write_config(tmp_path, "broken", "runs/b/seed{seed}", extra="unknown_key: 1\n")
    with pytest.raises(ValueError, match="config not found: .*missing.yaml"):
        plan_sweep([good, tmp_path / "missing.yaml"], [0])
    with pytest.raises(ValueError, match=f"{broken}.*unknown_key"):
        plan_sweep([good, broken], [0])
    with pytest.raises(ValueError, match="no seed"):
        plan_sweep([good], [])
    with pytest.raises(ValueError, match="repeats 1"):
        plan_sweep([good], [0, 1, 1])
    with pytest.raises(ValueError, match="--seeds"):
        plan_sweep([good], [0], ["seed=4"])


def test_bases_are_left_out(tmp_path):
    base = tmp_path / "_base.yaml"
    base.write_text("train: {epochs: 3}\n")
    recipe = write_config(tmp_path, "recipe", "runs/r/seed{seed}", extra="base: _base.yaml\n")
    plan = plan_sweep([base, recipe], [0])
    assert plan.bases == (base,) and [s.config_path for s in plan.runs] == [recipe]
    with pytest.raises(ValueError, match="base"):
        plan_sweep([base], [0])


def test_dry_run_of_the_cifar100_kd_recipes_lists_36_runs():
    configs = sorted(map(str, ROOT.glob("configs/cifar100/kd/*.yaml")))
    configs += sorted(map(str, ROOT.glob("configs/cifar100/kd++/*.yaml")))
    result = run_ndkd("sweep", *configs, "--seeds", "0", "1", "2", "--dry-run", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("36 runs") and "nothing started" in lines[-1]
    listed = [line for line in lines if " seed " in line]
    assert len(listed) == 36
    assert sum("runs/cifar100/kd++/resnet56_resnet20/seed2" in line for line in listed) == 1


# --- state ---------------------------------------------------------------------------------


def test_state_of_each_kind_of_folder(tmp_path):
    config = write_config(tmp_path, "a", str(tmp_path / "runs/seed{seed}"), epochs=3)
    spec = plan_sweep([config], [0]).runs[0]
    assert read_state(spec).kind == "new"  # absent

    spec.run_dir.mkdir(parents=True)
    spec.log_path.write_text("=== a sweep's log is not a run file\n")
    assert read_state(spec).kind == "new"
    assert plan_run(spec.config, resume=False).checkpoint is None  # train accepts the folder

    (spec.run_dir / "config.yaml").write_text(dump_config(spec.config))
    assert read_state(spec).kind == "resume"  # died before its first checkpoint
    fake_run(spec, epochs=2)
    assert read_state(spec).kind == "resume"
    fake_run(spec, epochs=3)
    assert read_state(spec).kind == "done"

    longer = plan_sweep([config], [0], ["train.epochs=5"]).runs[0]
    assert read_state(longer).kind == "resume"  # trains on to the new end
    faster = plan_sweep([config], [0], ["data.num_workers=2"]).runs[0]
    assert read_state(faster).kind == "done"  # speed-only keys may differ
    other = plan_sweep([config], [0], ["train.lr=0.2", "train.epochs=2"]).runs[0]
    state = read_state(other)
    assert state.kind == "conflict" and state.detail == "differs in train.epochs, train.lr"


def test_busy_when_a_live_process_or_another_host_holds_the_lock(tmp_path):
    config = write_config(tmp_path, "a", str(tmp_path / "runs/seed{seed}"))
    spec = plan_sweep([config], [0]).runs[0]
    spec.run_dir.mkdir(parents=True)
    lock = spec.run_dir / ".lock"
    here = socket.gethostname()

    lock.write_text(json.dumps({"pid": os.getpid(), "host": here, "started": "now"}))
    state = read_state(spec)
    assert state.kind == "busy" and f"pid {os.getpid()} on {here}" in state.detail

    lock.write_text(json.dumps({"pid": os.getpid(), "host": here + "-other"}))
    assert read_state(spec).kind == "busy"

    lock.write_text("{not json")
    assert read_state(spec).kind == "busy"

    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": here}))
    assert read_state(spec).kind == "new"  # stale: the run takes it over


def test_slots():
    cpu = choose_slots(workers=2)
    assert [s.label for s in cpu] == ["cpu0", "cpu1"] and cpu[0].gpu == ""
    gpu = choose_slots(gpus=["2", "5"], per_gpu=2)
    assert [(s.label, s.gpu) for s in gpu] == [
        ("gpu2.0", "2"), ("gpu5.0", "5"), ("gpu2.1", "2"), ("gpu5.1", "5")
    ]  # fmt: skip
    with pytest.raises(ValueError, match="one kind"):
        choose_slots(gpus=["0"], workers=2)
    with pytest.raises(ValueError, match="at least 1"):
        choose_slots(workers=0)


# --- the local queue, end to end -----------------------------------------------------------


def _complete(run_dir: Path) -> bool:
    return read_run(run_dir).complete


def test_sweep_two_configs_two_seeds_on_two_workers(tmp_path):
    configs = [write_config(tmp_path, n, str(tmp_path / f"runs/{n}/seed{{seed}}")) for n in "ab"]
    command = ("sweep", *map(str, configs), "--seeds", "0", "1", "--workers", "2")
    result = run_ndkd(*command, env=ONE_THREAD)
    assert result.returncode == 0, result.stdout + result.stderr
    folders = [tmp_path / f"runs/{n}/seed{s}" for n in "ab" for s in (0, 1)]
    assert all(_complete(folder) for folder in folders)
    lines = result.stdout.splitlines()
    for folder in folders:
        started = [line for line in lines if "started" in line and str(folder) in line]
        finished = [line for line in lines if "finished" in line and str(folder) in line]
        assert len(started) == 1 and " on cpu" in started[0]
        assert len(finished) == 1 and "test_top1" in finished[0]
        assert (folder / "sweep.log").read_text().startswith("=== ")
    assert f"ndkd analyze {tmp_path / 'runs'}" in result.stdout


def test_a_failing_run_is_listed_and_the_others_complete(tmp_path):
    good = write_config(tmp_path, "good", str(tmp_path / "runs/good/seed{seed}"))
    bad = write_config(
        tmp_path,
        "bad",
        str(tmp_path / "runs/bad/seed{seed}"),
        extra=f"teacher: {{arch: resnet8, checkpoint: {tmp_path / 'none.pth'}}}\n",
    )
    result = run_ndkd(
        "sweep", str(good), str(bad), "--seeds", "0", "--workers", "2", env=ONE_THREAD
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert _complete(tmp_path / "runs/good/seed0")
    log = tmp_path / "runs/bad/seed0/sweep.log"
    assert "none.pth" in log.read_text()
    summary = result.stdout.split("run(s) not done:", 1)[1]
    assert "failed" in summary and f"log {log}" in summary


def _wait_gone(pid: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still exists {timeout_s} s after SIGKILL")


def test_killed_sweep_resumes_where_it_stopped(tmp_path):
    """SIGKILL to the sweep's process group while run 2 trains; the same command again skips
    run 1 untouched and resumes run 2 (taking over its stale lock)."""
    first, second = tmp_path / "runs/short/seed0", tmp_path / "runs/long/seed0"
    short = write_config(tmp_path, "short", str(tmp_path / "runs/short/seed{seed}"), epochs=1)
    long = write_config(tmp_path, "long", str(tmp_path / "runs/long/seed{seed}"), epochs=6)
    command = ndkd_command("sweep", str(short), str(long), "--seeds", "0", "--workers", "1")
    sweep = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ONE_THREAD,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ((second / "config.yaml").is_file() and (second / ".lock").is_file()):
            assert sweep.poll() is None and time.monotonic() < deadline, "run 2 never started"
            time.sleep(0.02)
    finally:
        _kill_group(sweep)
        sweep.wait()
    assert _complete(first)
    _wait_gone(json.loads((second / ".lock").read_text())["pid"])  # reaped by init
    metrics = first / "metrics.jsonl"
    before = (metrics.read_bytes(), metrics.stat().st_mtime_ns)

    result = subprocess.run(command, capture_output=True, text=True, env=ONE_THREAD)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"skipped     {first}" in result.stdout
    assert f"started     {second} on cpu0 (resuming)" in result.stdout
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == before
    assert _complete(second) and not (second / ".lock").exists()
    log = (second / "sweep.log").read_text()
    assert "taking over the stale lock" in log and log.count("=== ") == 2


def _start_sweep(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ONE_THREAD,
        start_new_session=True,
    )


def _kill_group(sweep: subprocess.Popen) -> None:
    """SIGKILL to what is left of the sweep's process group (nothing when all went well)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(sweep.pid, signal.SIGKILL)


def _wait_training(sweep: subprocess.Popen, *run_dirs: Path) -> None:
    """Until every run has finished an epoch (its loop runs, with a checkpoint)."""
    deadline = time.monotonic() + 120
    while not all((d / "metrics.jsonl").is_file() for d in run_dirs):
        assert sweep.poll() is None and time.monotonic() < deadline, "runs never trained"
        time.sleep(0.02)


def test_sigterm_stops_the_running_runs_at_a_checkpoint(tmp_path):
    config = write_config(tmp_path, "a", str(tmp_path / "runs/seed{seed}"), epochs=300)
    runs = [tmp_path / f"runs/seed{seed}" for seed in (0, 1, 2)]
    sweep = _start_sweep(
        ndkd_command("sweep", str(config), "--seeds", "0", "1", "2", "--workers", "2")
    )
    try:
        _wait_training(sweep, *runs[:2])
        sweep.send_signal(signal.SIGTERM)
        output, _ = sweep.communicate(timeout=120)
    finally:
        _kill_group(sweep)
    assert sweep.returncode == 1, output
    summary = output.split("run(s) not done:", 1)[1]
    for run in runs[:2]:
        assert f"interrupted {run}  log {run / 'sweep.log'}" in summary
        assert (run / "last.pt").is_file() and not (run / ".lock").exists()
        assert "stopped by SIGTERM" in (run / "sweep.log").read_text()
    assert f"cancelled   {runs[2]}" in summary and not runs[2].exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_runs_of_a_killed_sweep_stop_instead_of_running_on(tmp_path):
    config = write_config(tmp_path, "a", str(tmp_path / "runs/seed{seed}"), epochs=300)
    run = tmp_path / "runs/seed0"
    sweep = _start_sweep(ndkd_command("sweep", str(config), "--seeds", "0"))
    try:
        _wait_training(sweep, run)
        child = json.loads((run / ".lock").read_text())["pid"]
        sweep.kill()  # the sweep alone: its run gets SIGTERM from the kernel
        sweep.communicate()
        _wait_gone(child)
    finally:
        _kill_group(sweep)
    assert "stopped by SIGTERM" in (run / "sweep.log").read_text()
    assert (run / "last.pt").is_file() and not (run / ".lock").exists()
