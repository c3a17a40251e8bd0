"""The training loop every task and method runs in; it knows neither by name."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ndkd.collective import all_reduce_sum, barrier, broadcast_buffers
from ndkd.engine.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from ndkd.engine.distributed import SINGLE_PROCESS, DistInfo
from ndkd.engine.metrics import MetricsLog
from ndkd.engine.schedule import lr_factor
from ndkd.engine.settings import LoopSettings
from ndkd.models.fold import fold_batchnorm
from ndkd.progress import Progress, ProgressFn
from ndkd.tasks.base import Task

log = logging.getLogger(__name__)

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


class EpochLoader(Protocol):
    """What the loop needs of a training loader (``ndkd.data.InMemoryLoader`` is one)."""

    def set_epoch(self, epoch: int) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Any: ...


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class RunWriteError(ValueError):
    """The run folder could not be written (full disk, permissions); the previous
    checkpoint is intact."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run at a step boundary; ``signum`` is the signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StudentStep(nn.Module):
    """Student forward plus the loss composition in one module, so DDP sees every trainable
    parameter (the student's and the method's own) in one forward."""

    def __init__(self, task: Task, student: nn.Module, method: nn.Module, device_type: str):
        super().__init__()
        self.task = task
        self.student = student
        self.method = method
        self.device_type = device_type

    def forward(self, batch: Any, teacher_out: Any, epoch: int):
        out = self.task.forward(self.student, batch)
        # Loss terms and the method's own modules run outside autocast, in fp32.
        with torch.autocast(self.device_type, enabled=False):
            losses = self.task.step_losses(self.method, out, teacher_out, batch, epoch)
        return out, losses


class Trainer:
    """Trains ``student`` on ``task`` with the named losses of ``method``; writes the run folder.

    Args:
        task: what a batch is, how models are called, which rows the terms see, how the
            student is evaluated (its ``primary_metric`` picks ``best.pt``).
        student: the model to train, on ``device``.
        teacher: frozen teacher or ``None``; kept in eval mode, never wrapped in DDP. Each
            step runs :func:`ndkd.models.fold.fold_batchnorm`'s copy of it (the same outputs,
            one pass over the activations less per folded BatchNorm).
        method: the loss composition (``ndkd.methods.Distiller``); its parameters are trained
            with the student.
        train_loader / test_loader: raw batches for ``task``; the test loader covers this
            process's share of the evaluation set exactly once.
        settings: loop hyper-parameters (``ndkd.config.TrainConfig``). ``run_dir``: the run
            folder (rank 0 writes).
        config: the resolved config, stored in checkpoints.
        progress: optional callback receiving :class:`ndkd.progress.Progress` (phase
            ``"train"``) at each epoch end and, when ``progress_every`` > 0, every that many
            steps (each such report is one host-device sync; 0: no sync inside an epoch).
        sinks: extra epoch-record writers (``append(record)``, e.g. TensorBoard) beside
            ``metrics.jsonl``, on the main process.
    """

    def __init__(
        self,
        *,
        task: Task,
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
        progress: ProgressFn | None = None,
        progress_every: int = 20,
        sinks: Iterable[Any] = (),
    ) -> None:
        self.task = task
        self.student, self.teacher, self.method = student, teacher, method
        self.train_loader, self.test_loader = train_loader, test_loader
        self.settings, self.device, self.dist = settings, device, dist_info
        self.run_dir = Path(run_dir)
        self.config = config or {}
        self.progress = progress
        self.progress_every = progress_every
        self.sinks = list(sinks)
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
        step_module: nn.Module = _StudentStep(task, student, method, device.type)
        if dist_info.enabled:
            # Buffers are not broadcast every step: the method's (class means, hash planes,
            # memory banks) are constant or kept in sync by their term, and the student's
            # (BatchNorm statistics) are copied from rank 0 before every evaluation and
            # checkpoint, which leaves rank 0's statistics as DDP's default would.
            step_module = DistributedDataParallel(
                step_module,
                device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False,
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
        self.best_metric = -math.inf
        self._stop_signal: int | None = None

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
            "best_metric": self.best_metric,
            "config": self.config,
        }

    def resume(self, state: dict[str, Any] | None = None) -> None:
        """Continue from a checkpoint's ``state`` (default: read ``last.pt``): weights,
        optimizer, schedule, scaler, RNG of every process, metrics history;
        ``metrics.jsonl`` is rewritten to match."""
        if state is None:
            state = load_checkpoint(self.run_dir / LAST)
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
        self.best_metric = float(state["best_metric"])
        self.start_epoch = int(state["epoch"])
        if self.dist.is_main:
            MetricsLog(self.run_dir / METRICS).rewrite(self.history)
        log.info("resumed after epoch %d", self.start_epoch)

    # ------------------------------------------------------------------ loop
    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the metrics history.

        SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption notice) stop the run at the
        next step boundary with :class:`RunInterrupted` (a second SIGINT stops at once).
        With one process the signal is seen after the current step; with several, where
        progress is reported (``progress_every``) and at epoch ends, so every process
        stops at the same step. The last checkpoint is the one of the last finished epoch.
        """
        self._stop_signal = None
        previous = self._install_signal_handlers()
        try:
            return self._fit()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # signals are delivered to the main thread only

        def request_stop(signum: int, frame: Any) -> None:
            self._stop_signal = signum
            if signum == signal.SIGINT:
                signal.signal(signal.SIGINT, signal.default_int_handler)

        return {signum: signal.signal(signum, request_stop) for signum in STOP_SIGNALS}

    def _stop_requested(self, sync_point: bool) -> bool:
        """Whether a stop signal arrived (agreed by all processes at sync points)."""
        if not self.dist.enabled:
            return self._stop_signal is not None
        if not sync_point:
            return False
        flag = torch.tensor(
            [0 if self._stop_signal is None else self._stop_signal], device=self.device
        )
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            self._stop_signal = int(flag.item())
        return bool(flag.item())

    def _interrupted(self, where: str) -> RunInterrupted:
        name = signal.Signals(self._stop_signal).name
        return RunInterrupted(
            self._stop_signal, f"stopped by {name} {where}; {self._checkpoint_status()}"
        )

    def _checkpoint_status(self, done: int | None = None) -> str:
        """Where the last checkpoint stands (after ``done`` epochs: default, the history's)."""
        done = len(self.history) if done is None else done
        if done == 0:
            return "no checkpoint was written yet (--resume starts the run again at epoch 1)"
        return f"the last checkpoint is {self.run_dir / LAST} (after epoch {done})"

    def _fit(self) -> list[dict[str, Any]]:
        metrics = MetricsLog(self.run_dir / METRICS)
        primary = self.task.primary_metric
        epochs = self.settings.epochs
        for epoch in range(self.start_epoch, epochs):
            record = self._train_epoch(epoch)
            broadcast_buffers(self.student)
            last = epoch + 1 == epochs
            if last or (epoch + 1) % self.settings.eval_every == 0:
                record.update(self.evaluate())
            self.history.append(record)
            is_best = record.get(primary, -math.inf) > self.best_metric
            if is_best:
                self.best_metric = record[primary]
            state = self.state(epoch + 1)  # collective (RNG gather): every rank
            if self.dist.is_main:
                self._write(state, record, is_best, metrics)
            barrier()
            if self.progress is not None:
                steps = len(self.train_loader)
                self.progress(Progress("train", steps, steps, epoch + 1, epochs, record=record))
            if epoch + 1 < epochs and self._stop_requested(sync_point=True):
                raise self._interrupted(f"at the end of epoch {epoch + 1}")
        return self.history

    def _write(self, state, record, is_best: bool, metrics: MetricsLog) -> None:
        """Checkpoints first (atomic), then the metrics line; a failed write says what is
        intact."""
        status = self._checkpoint_status(record["epoch"] - 1)  # this epoch's is not written
        try:
            save_checkpoint(self.run_dir / LAST, state)
            if is_best:
                save_checkpoint(self.run_dir / BEST, state)
            metrics.append(record)
            for sink in self.sinks:
                sink.append(record)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as either
            reason = getattr(error, "strerror", None) or str(error)
            raise RunWriteError(
                f"could not write the run folder {self.run_dir} after epoch "
                f"{record['epoch']} ({reason}); {status}"
            ) from error

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self.student.train()
        self.method.train()
        self.train_loader.set_epoch(epoch)
        steps = len(self.train_loader)
        sums: dict[str, torch.Tensor] = {}
        first_bad: dict[str, torch.Tensor] = {}
        meter = self.task.train_meter(self.device, self.teacher is not None)
        lr = self.optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        for step, raw in enumerate(self.train_loader):
            batch = self.task.to_device(raw, self.device, self.memory_format)
            teacher_out = None
            if self.teacher_forward is not None:
                with torch.no_grad(), self.autocast():
                    teacher_out = self.task.forward(self.teacher_forward, batch)
            with self.autocast():
                student_out, losses = self.step_module(batch, teacher_out, epoch)
            total = sum(value.float() for value in losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self._accumulate(sums, first_bad, losses, step)
            meter.update(student_out, teacher_out, batch)
            every = self.progress_every
            report = self.progress is not None and every and (step + 1) % every == 0
            if report:
                self._check_finite(first_bad, epoch)
                means = {k: float(v) / (step + 1) for k, v in sums.items()}
                self.progress(
                    Progress("train", step + 1, steps, epoch + 1, self.settings.epochs, means)
                )
            if step + 1 < steps and self._stop_requested(sync_point=bool(report)):
                raise self._interrupted(f"in epoch {epoch + 1} after step {step + 1}/{steps}")
        self._check_finite(first_bad, epoch)
        elapsed = time.perf_counter() - start
        return self._epoch_record(epoch, lr, sums, steps, meter, elapsed)

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
                f"{step + 1}; training stopped; {self._checkpoint_status()}"
            )

    def _epoch_record(self, epoch, lr, sums, steps, meter, elapsed) -> dict[str, Any]:
        names = list(sums)
        meter_totals = meter.totals()
        losses = torch.stack([sums[n] for n in names]) if names else meter_totals.new_zeros(0)
        packed = all_reduce_sum(torch.cat([losses.to(meter_totals), meter_totals])).tolist()
        world = self.dist.world_size
        loss_means = {n: packed[i] / (steps * world) for i, n in enumerate(names)}
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "loss": sum(loss_means.values())}
        record.update({f"loss/{name}": value for name, value in loss_means.items()})
        totals = packed[len(names) :]
        record.update(meter.summarize(totals))
        record.update(
            {
                "epoch_time_s": elapsed,
                "images_per_s": totals[0] / elapsed,
                "peak_memory_mb": peak_memory_mb(self.device),
            }
        )
        return record

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation metrics of the student, summed over processes."""
        return self.task.evaluate(
            self.student, self.test_loader, self.device, self.autocast, self.memory_format
        )


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
