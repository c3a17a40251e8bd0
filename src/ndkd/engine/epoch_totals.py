"""One epoch's running totals on the device (no host sync per step), resumable mid-epoch."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ndkd.collective import all_reduce_sum
from ndkd.tasks.base import TrainMeter


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class EpochTotals:
    """Running sums of every loss term, the step at which each first became non-finite, the
    task's training statistics, the epoch's starting LR and the time spent so far."""

    def __init__(self, meter: TrainMeter, lr: float, device: torch.device) -> None:
        self.meter = meter
        self.lr = lr
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.first_bad: dict[str, torch.Tensor] = {}
        self.elapsed = 0.0
        self._started = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], step: int) -> None:
        """Add one step's losses (on device, no sync)."""
        for name, value in losses.items():
            value = value.detach().float()
            finite = torch.isfinite(value)
            if name not in self.sums:
                self.sums[name] = torch.zeros((), device=value.device)
                self.first_bad[name] = torch.full((), -1, dtype=torch.long, device=value.device)
            self.sums[name] += torch.where(finite, value, torch.zeros_like(value))
            unset = self.first_bad[name] < 0
            self.first_bad[name] = torch.where(unset & ~finite, step, self.first_bad[name])

    def means(self, steps: int) -> dict[str, float]:
        """Mean of every term over ``steps`` steps of this process (one sync)."""
        return {name: float(value) / steps for name, value in self.sums.items()}

    def first_non_finite(self, enabled_distributed: bool) -> tuple[int, str] | None:
        """The earliest ``(step, term)`` that became non-finite on any process, or None."""
        if not self.first_bad:
            return None
        never = torch.iinfo(torch.long).max
        steps = torch.stack([torch.where(v < 0, never, v) for v in self.first_bad.values()])
        if enabled_distributed:
            torch.distributed.all_reduce(steps, op=torch.distributed.ReduceOp.MIN)
        step, _, name = min(zip(steps.tolist(), range(len(self.first_bad)), self.first_bad))
        return None if step == never else (step, name)

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self._started

    def record(self, epoch: int, steps: int, world: int) -> dict[str, Any]:
        """The epoch's ``metrics.jsonl`` record: means over all processes (one collective)."""
        names = list(self.sums)
        meter_totals = self.meter.totals()
        losses = torch.stack([self.sums[n] for n in names]) if names else meter_totals.new_zeros(0)
        packed = all_reduce_sum(torch.cat([losses.to(meter_totals), meter_totals])).tolist()
        loss_means = {n: packed[i] / (steps * world) for i, n in enumerate(names)}
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": self.lr,
            "loss": sum(loss_means.values()),
        }
        record.update({f"loss/{name}": value for name, value in loss_means.items()})
        totals = packed[len(names) :]
        record.update(self.meter.summarize(totals))
        elapsed = self.seconds()
        record.update(
            {
                "epoch_time_s": elapsed,
                "images_per_s": totals[0] / elapsed,
                "peak_memory_mb": peak_memory_mb(self.device),
            }
        )
        return record

    def state_dict(self) -> dict[str, Any]:
        """This process's totals so far, for a mid-epoch checkpoint."""
        return {
            "lr": self.lr,
            "sums": {name: value.cpu() for name, value in self.sums.items()},
            "first_bad": {name: value.cpu() for name, value in self.first_bad.items()},
            "meter": self.meter.totals().cpu(),
            "elapsed": self.seconds(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.sums = {name: value.to(self.device) for name, value in state["sums"].items()}
        self.first_bad = {name: value.to(self.device) for name, value in state["first_bad"].items()}
        self.meter.totals().copy_(state["meter"].to(self.device))
        self.elapsed = float(state["elapsed"])
        self._started = time.perf_counter()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # POSIX only
    except ImportError:
        return math.nan
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
