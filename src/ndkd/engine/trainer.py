"""The training loop every method runs in. It knows the output contract, not the methods."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ndkd.engine.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from ndkd.engine.distributed import SINGLE_PROCESS, DistInfo, all_reduce_sum, barrier
from ndkd.engine.metrics import MetricsLog, topk_correct
from ndkd.engine.schedule import lr_factor
from ndkd.methods.base import StepOutputs
from ndkd.models.fold import fold_batchnorm
from ndkd.models.output import ModelOutput

log = logging.getLogger(__name__)

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


class EpochLoader(Protocol):
    """What the loop needs of a training loader (``ndkd.data.InMemoryLoader`` is one)."""

    def set_epoch(self, epoch: int) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Any: ...


class LossComposition(Protocol):
    """What the loop needs of the method: named weighted losses (``ndkd.methods.Distiller``)."""

    def __call__(self, outputs: StepOutputs, epoch: int) -> dict[str, torch.Tensor]: ...
    def parameters(self) -> Iterable[nn.Parameter]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class LoopSettings:
    """Hyper-parameters of the loop (a subset of ``ndkd.config.TrainConfig``)."""

    epochs: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    lr_warmup_epochs: float = 0.0
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    eval_every: int = 1
    log_every: int = 20
    """Report progress (and check losses for NaN/inf) every N steps: each report is one
    host-device sync. 0: only at epoch ends (no sync inside an epoch)."""


@dataclass
class Progress:
    """Reported to the progress callback: every ``log_every`` steps, and at each epoch end
    (then ``record`` holds the epoch's metrics)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    losses: dict[str, float]
    record: dict[str, Any] | None = None


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class _StudentStep(nn.Module):
    """Student forward plus the loss composition in one module, so DDP sees every trainable
    parameter (the student's and the method's own) in one forward."""

    def __init__(self, student: nn.Module, method: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.method = method

    def forward(self, images, labels, teacher_out, epoch: int, indices=None):
        out = self.student(images)
        # Loss terms and the method's own modules run outside autocast, in fp32.
        with torch.autocast(images.device.type, enabled=False):
            step = StepOutputs(_fp32(out), _fp32(teacher_out), labels, images, indices)
            losses = self.method(step, epoch)
        return out, losses


def _fp32(output: ModelOutput | None) -> ModelOutput | None:
    """``output`` with its half-precision tensors (from autocast) cast to float32; other
    tensors (float32, float64) pass through unchanged."""
    if output is None:
        return output

    def up(x: torch.Tensor) -> torch.Tensor:
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x

    return ModelOutput(
        up(output.logits),
        up(output.embedding),
        [up(x) for x in output.stages],
        [up(x) for x in output.preact_stages],
    )


class Trainer:
    """Trains ``student`` with the named losses of ``method``; writes the run folder.

    Args:
        student: an ndkd model (returns ``ModelOutput``), on ``device``.
        teacher: frozen teacher or ``None``; kept in eval mode, never wrapped in DDP. Each
            step runs :func:`ndkd.models.fold.fold_batchnorm`'s copy of it (the same outputs,
            one pass over the activations less per folded BatchNorm).
        method: the loss composition; its parameters are trained with the student.
        train_loader / test_loader: batches of ``(images, labels)``; the test loader
            covers this process's share of the test set exactly once.
        settings: loop hyper-parameters. ``run_dir``: the run folder (rank 0 writes).
        config: the resolved config, stored in checkpoints.
        progress: optional callback receiving :class:`Progress`.
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module | None,
        method: nn.Module,
        train_loader: EpochLoader,
        test_loader: Iterable,
        settings: LoopSettings,
        run_dir: str | Path,
        device: torch.device,
        dist_info: DistInfo = SINGLE_PROCESS,
        config: dict[str, Any] | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.student, self.teacher, self.method = student, teacher, method
        self.train_loader, self.test_loader = train_loader, test_loader
        self.settings, self.device, self.dist = settings, device, dist_info
        self.run_dir = Path(run_dir)
        self.config = config or {}
        self.progress = progress
        self.memory_format = torch.channels_last if settings.channels_last else None
        if self.memory_format is not None:
            student.to(memory_format=self.memory_format)
            if teacher is not None:
                teacher.to(memory_format=self.memory_format)
        self.teacher_forward: nn.Module | None = None
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            # Built after the method, which may read the teacher's BatchNorms (OFD margins).
            self.teacher_forward = fold_batchnorm(teacher)
            if self.memory_format is not None:
                self.teacher_forward.to(memory_format=self.memory_format)
        step_module: nn.Module = _StudentStep(student, method)
        if dist_info.enabled:
            # Method buffers (class means, hash planes, memory banks) are constant or kept in
            # sync by their term: DDP need not broadcast them every step.
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                step_module, [f"method.{name}" for name, _ in method.named_buffers()]
            )
            step_module = DistributedDataParallel(
                step_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.step_module = torch.compile(step_module) if settings.compile else step_module
        params = [p for p in (*student.parameters(), *method.parameters()) if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params,
            lr=settings.lr,
            momentum=settings.momentum,
            nesterov=settings.nesterov,
            weight_decay=settings.weight_decay,
        )
        steps = len(train_loader)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step,
                steps,
                epochs=settings.epochs,
                schedule=settings.schedule,
                milestones=settings.milestones,
                gamma=settings.gamma,
                warmup_epochs=settings.lr_warmup_epochs,
            ),
        )
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.amp)
        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.amp == "fp16")
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_top1 = -math.inf

    # ----------------------------------------------------------------- state
    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.student.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _gather_rng(),
            "history": self.history,
            "best_top1": self.best_top1,
            "config": self.config,
        }

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from ``last.pt`` (or ``path``): weights, optimizer, schedule, scaler,
        RNG of every process, metrics history; ``metrics.jsonl`` is rewritten to match."""
        state = load_checkpoint(path or self.run_dir / LAST)
        self.student.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        if len(rng) != self.dist.world_size:
            raise ValueError(
                f"the checkpoint was written by {len(rng)} processes; resume it "
                f"with the same number (this run has {self.dist.world_size})"
            )
        restore_rng_state(rng[self.dist.rank])
        self.history = list(state["history"])
        self.best_top1 = float(state["best_top1"])
        self.start_epoch = int(state["epoch"])
        if self.dist.is_main:
            MetricsLog(self.run_dir / METRICS).rewrite(self.history)
        log.info("resumed after epoch %d from %s", self.start_epoch, path or self.run_dir / LAST)

    # ------------------------------------------------------------------ loop
    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the metrics history."""
        metrics = MetricsLog(self.run_dir / METRICS)
        for epoch in range(self.start_epoch, self.settings.epochs):
            record = self._train_epoch(epoch)
            last = epoch + 1 == self.settings.epochs
            if last or (epoch + 1) % self.settings.eval_every == 0:
                record.update(self.evaluate())
            self.history.append(record)
            is_best = record.get("test_top1", -math.inf) > self.best_top1
            if is_best:
                self.best_top1 = record["test_top1"]
            state = self.state(epoch + 1)  # collective (RNG gather): every rank
            if self.dist.is_main:
                save_checkpoint(self.run_dir / LAST, state)
                if is_best:
                    save_checkpoint(self.run_dir / BEST, state)
                metrics.append(record)
            barrier()
            if self.progress is not None:
                self.progress(
                    Progress(
                        epoch + 1,
                        self.settings.epochs,
                        len(self.train_loader),
                        len(self.train_loader),
                        {},
                        record,
                    )
                )
        return self.history

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self.student.train()
        self.method.train()
        self.train_loader.set_epoch(epoch)
        steps = len(self.train_loader)
        sums: dict[str, torch.Tensor] = {}
        first_bad: dict[str, torch.Tensor] = {}
        stats = torch.zeros(5, dtype=torch.float64, device=self.device)  # n, top1, top5, |s|, |t|
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        for step, (images, labels, *extra) in enumerate(self.train_loader):
            images, labels = self._to_device(images, labels)
            indices = extra[0].to(self.device, non_blocking=True) if extra else None
            teacher_out = None
            if self.teacher_forward is not None:
                with torch.no_grad(), self.autocast():
                    teacher_out = self.teacher_forward(images)
            with self.autocast():
                student_out, losses = self.step_module(images, labels, teacher_out, epoch, indices)
            total = sum(value.float() for value in losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self._accumulate(sums, first_bad, losses, step)
            self._accumulate_stats(stats, student_out, teacher_out, labels)
            log_every = self.settings.log_every
            if self.progress is not None and log_every and (step + 1) % log_every == 0:
                self._check_finite(first_bad, epoch)
                means = {k: float(v) / (step + 1) for k, v in sums.items()}
                self.progress(Progress(epoch, self.settings.epochs, step + 1, steps, means))
        self._check_finite(first_bad, epoch)
        elapsed = time.perf_counter() - start
        return self._epoch_record(epoch, lr, sums, steps, stats, elapsed)

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor):
        """Move a batch to the device (channels_last when configured)."""
        images = images.to(self.device, non_blocking=True)
        if self.memory_format is not None:
            images = images.contiguous(memory_format=self.memory_format)
        return images, labels.to(self.device, non_blocking=True)

    @staticmethod
    def _accumulate(sums, first_bad, losses, step: int) -> None:
        """Running sums and the first non-finite step of every term, on device (no sync)."""
        for name, value in losses.items():
            value = value.detach().float()
            finite = torch.isfinite(value)
            if name not in sums:
                sums[name] = torch.zeros((), device=value.device)
                first_bad[name] = torch.full((), -1, dtype=torch.long, device=value.device)
            sums[name] += torch.where(finite, value, torch.zeros_like(value))
            unset = first_bad[name] < 0
            first_bad[name] = torch.where(unset & ~finite, step, first_bad[name])

    def _check_finite(self, first_bad: dict[str, torch.Tensor], epoch: int) -> None:
        """Stop every process if any saw a non-finite term (one sync per call)."""
        if not first_bad:
            return
        never = torch.iinfo(torch.long).max
        steps = torch.stack([torch.where(v < 0, never, v) for v in first_bad.values()])
        if self.dist.enabled:
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
        step, _, name = min(zip(steps.tolist(), range(len(first_bad)), first_bad))  # earliest
        if step != never:
            raise NonFiniteLossError(
                f"loss term {name!r} became non-finite at epoch {epoch + 1}, step "
                f"{step + 1}; training stopped. The last good checkpoint is "
                f"{self.run_dir / LAST} (after epoch {len(self.history)})"
            )

    @staticmethod
    def _accumulate_stats(stats, student_out, teacher_out, labels) -> None:
        with torch.no_grad():
            logits = student_out.logits.detach()
            correct = topk_correct(logits, labels)
            stats[0] += labels.shape[0]
            stats[1:3] += correct.to(stats.dtype)
            stats[3] += torch.linalg.vector_norm(student_out.embedding.float(), dim=1).sum()
            if teacher_out is not None:
                stats[4] += torch.linalg.vector_norm(teacher_out.embedding.float(), dim=1).sum()

    def _epoch_record(self, epoch, lr, sums, steps, stats, elapsed) -> dict[str, Any]:
        names = list(sums)
        packed = torch.cat(
            [torch.stack([sums[n] for n in names]).double() if names else stats.new_zeros(0), stats]
        )
        packed = all_reduce_sum(packed).tolist()
        world = self.dist.world_size
        loss_means = {n: packed[i] / (steps * world) for i, n in enumerate(names)}
        n, top1, top5, s_norm, t_norm = packed[len(names) :]
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": sum(loss_means.values())}
        record.update({f"loss/{name}": value for name, value in loss_means.items()})
        record.update(
            {
                "train_top1": 100.0 * top1 / n,
                "train_top5": 100.0 * top5 / n,
                "student_emb_norm": s_norm / n,
            }
        )
        if self.teacher is not None:
            record["teacher_emb_norm"] = t_norm / n
        record.update(
            {
                "epoch_time_s": elapsed,
                "images_per_s": n / elapsed,
                "peak_memory_mb": peak_memory_mb(self.device),
            }
        )
        return record

    def evaluate(self) -> dict[str, float]:
        """Top-1/top-5 (%) of the student on the test loader, summed over processes."""
        return evaluate_model(
            self.student, self.test_loader, self.device, self.autocast, self.memory_format
        )


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    autocast: Callable[[], Any] = nullcontext,
    memory_format: torch.memory_format | None = None,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) of ``model`` over ``loader``, summed over processes."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if memory_format is not None:
            images = images.contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast():
            logits = model(images).logits
        totals[0] += labels.shape[0]
        totals[1:] += topk_correct(logits.float(), labels).to(totals.dtype)
    n, top1, top5 = all_reduce_sum(totals).tolist()
    if n == 0:
        raise ValueError("the test loader yielded no samples")
    return {"test_top1": 100.0 * top1 / n, "test_top5": 100.0 * top5 / n, "test_samples": int(n)}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # POSIX only
    except ImportError:
        return math.nan
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _gather_rng() -> list[dict[str, Any]]:
    """Every process's RNG state, in rank order (the checkpoint restores each its own)."""
    state = rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered
