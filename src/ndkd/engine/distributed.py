"""Process-group set-up from torchrun or SLURM variables, and small collective helpers."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = DistInfo()


def read_env() -> DistInfo:
    """Rank facts from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM (SLURM_PROCID, ...)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return DistInfo(
            int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        )
    return SINGLE_PROCESS


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group the environment describes (no-op for a single process).

    Uses NCCL for CUDA devices and gloo otherwise; under SLURM, MASTER_ADDR and MASTER_PORT
    must be exported by the job script, as torchrun does itself.
    """
    info = read_env()
    if not info.enabled or dist.is_initialized():
        return info
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"distributed run (world size {info.world_size}) needs "
            f"{' and '.join(missing)} in the environment"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    log.info("process group: rank %d of %d (%s)", info.rank, info.world_size, backend)
    return info
