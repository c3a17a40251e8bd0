"""Two CPU processes under torchrun (gloo): DDP student, sharded data, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import write_kdpp_config


def test_torchrun_two_processes(tmp_path, digits_teacher):
    config = write_kdpp_config(tmp_path, digits_teacher, epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "ndkd",
            "train",
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one writer
    records = [json.loads(line) for line in lines]
    assert all(r["test_samples"] == 359 for r in records)  # every test image counted once
    assert records[-1]["test_top1"] > 50.0
    assert result.stdout.count("epoch 2/2") == 1  # rank 0 alone talks
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best.pt",
        "config.yaml",
        "dataset.json",
        "last.pt",
        "metrics.jsonl",
    ]
