"""The documented multi-process launch lines, run on this machine's loopback with CPU
processes (gloo): SLURM's `srun` (its variables and MASTER_ADDR/PORT, as the README's job
script sets them) and a two-node `torchrun` rendezvous. Both equal the torchrun run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from helpers import write_kdpp_config
from test_engine_resume import comparable

BASE_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
for _key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
    BASE_ENV.pop(_key, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def finish(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]


def test_srun_style_tasks_and_two_node_torchrun_agree(tmp_path, digits_teacher):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "nodes").mkdir()
    slurm = write_kdpp_config(tmp_path / "slurm", digits_teacher, epochs=2)
    nodes = write_kdpp_config(tmp_path / "nodes", digits_teacher, epochs=2)
    port = free_port()
    # srun --ntasks=2: one process per task, rank facts from SLURM's variables
    tasks = [
        subprocess.Popen(
            [sys.executable, "-m", "ndkd", "train", "-c", str(slurm)],
            env={
                **BASE_ENV,
                "SLURM_PROCID": str(task),
                "SLURM_NTASKS": "2",
                "SLURM_LOCALID": str(task),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for task in range(2)
    ]
    finish(tasks)
    # torchrun --nnodes=2 --node_rank=N --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT
    endpoint = f"127.0.0.1:{free_port()}"
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node_rank={node}",
                "--nproc_per_node=1",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint={endpoint}",
                "--rdzv_id=ndkd-test",
                "-m",
                "ndkd",
                "train",
                "-c",
                str(nodes),
            ],
            env=BASE_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in range(2)
    ]
    finish(launchers)
    first = comparable(tmp_path / "slurm" / "run" / "metrics.jsonl")
    second = comparable(tmp_path / "nodes" / "run" / "metrics.jsonl")
    assert len(first) == 2 and first == second
    record = json.loads((tmp_path / "slurm" / "run" / "metrics.jsonl").read_text().split("\n")[0])
    assert record["test_samples"] == 359  # every test image once over both processes
