"""class_means all-reduces sums and counts across processes (2 CPU processes, gloo)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ndkd import class_means


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(30, 5)
    y = torch.tensor([0] * 4 + [1] * 20 + [2] * 6)
    return model, x, y


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, x, y = _problem()
        shard = slice(rank, None, world)  # each rank sees a different class mix
        got = class_means(model, [(x[shard], y[shard])], 3)
        if rank == 0:
            torch.save({"means": got.means, "counts": got.counts}, out_file)
    finally:
        dist.destroy_process_group()


def test_two_process_means_equal_single_process(tmp_path):
    out = tmp_path / "result.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    model, x, y = _problem()
    full = class_means(model, [(x, y)], 3)
    torch.testing.assert_close(result["means"], full.means)
    assert result["counts"].tolist() == [4, 20, 6]
