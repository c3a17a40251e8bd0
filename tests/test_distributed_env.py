"""Rank facts from torchrun or SLURM variables."""

from __future__ import annotations

import pytest

from ndkd.engine import read_env


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 1, 0)),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1)),
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}, (5, 8, 1)),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (0, 1, 0)),  # a one-task job
    ],
)
def test_read_env(monkeypatch, env, expected):
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
    ):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    info = read_env()
    assert (info.rank, info.world_size, info.local_rank) == expected
    assert info.is_main == (expected[0] == 0)
