"""all_gather_rows: identity for one process; rank-ordered rows for two (gloo, CPU)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ndkd.collective import all_gather_rows

ROWS = (3, 0)  # rows held by rank 0 and rank 1 (swapped in the second gather)


def _rows(rank: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    base = torch.arange(count * 4).reshape(count, 2, 2) + 100 * rank
    return base.to(dtype)


def test_single_process_is_identity():
    tensor = torch.arange(6).reshape(3, 2)
    assert all_gather_rows(tensor) is tensor


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        uneven = all_gather_rows(_rows(rank, ROWS[rank], torch.float32))
        flags = all_gather_rows(_rows(rank, ROWS[1 - rank], torch.int8))
        empty = all_gather_rows(torch.zeros(0, 5))
        if rank == 0:
            torch.save({"uneven": uneven, "flags": flags, "empty": empty}, out_file)
    finally:
        dist.destroy_process_group()


def test_two_processes_concatenate_in_rank_order(tmp_path):
    out = tmp_path / "gathered.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    expected = torch.cat([_rows(0, ROWS[0], torch.float32), _rows(1, ROWS[1], torch.float32)])
    assert torch.equal(got["uneven"], expected)
    flags = torch.cat([_rows(0, ROWS[1], torch.int8), _rows(1, ROWS[0], torch.int8)])
    assert got["flags"].dtype == torch.int8 and torch.equal(got["flags"], flags)
    assert got["empty"].shape == (0, 5)
