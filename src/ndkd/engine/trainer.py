"""The training loop every task and method runs in; it knows neither by name."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from ndkd.collective import barrier, broadcast_buffers
from ndkd.engine.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from ndkd.engine.distributed import SINGLE_PROCESS, DistInfo
from ndkd.engine.ema import ModelEma
from ndkd.engine.epoch_totals import EpochTotals, NonFiniteLossError
from ndkd.engine.metrics import MetricsLog
from ndkd.engine.optim import build_optimizer, trained_parameters
from ndkd.engine.schedule import build_scheduler, planned_epochs
from ndkd.engine.settings import LoopSettings
from ndkd.engine.stop_signals import RunInterrupted, StopSignals
from ndkd.models.fold import fold_batchnorm
from ndkd.progress import Progress, ProgressFn
from ndkd.tasks.base import Task

log = logging.getLogger(__name__)

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"


class EpochLoader(Protocol):
    """What the loop needs of a training loader (``ndkd.data.InMemoryLoader`` is one):
    ``start_at(step)`` makes the next iteration of the current epoch begin at batch ``step``
    (a mid-epoch resume), with the batches an uninterrupted epoch has there."""

    def set_epoch(self, epoch: int) -> None: ...
    def start_at(self, step: int) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Any: ...


class RunWriteError(ValueError):
    """The run folder could not be written (full disk, permissions); the previous
    checkpoint is intact."""


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
            student is evaluated (the student's ``primary_metric``, never the EMA's, picks
            ``best.pt``).
        student: the model to train, on ``device``.
        teacher: frozen teacher or ``None``; kept in eval mode, never wrapped in DDP. Each
            step runs :func:`ndkd.models.fold.fold_batchnorm`'s copy of it (the same outputs,
            one pass over the activations less per folded BatchNorm), unless
            ``teacher_batch_stats``.
        teacher_batch_stats: run the teacher's BatchNorms in training mode (statistics of
            the batch) for its forward in each training step, and only there: the teacher
            itself runs (no folded copy), under ``no_grad``; its running statistics update
            as a side effect (never checkpointed: a resume starts them from the loaded
            teacher again), its parameters stay frozen, every other layer stays in eval
            mode, and it is back in eval mode after each such forward.
        method: the loss composition (``ndkd.methods.Distiller``); its parameters are trained
            with the student.
        train_loader / test_loader: raw batches for ``task``; the test loader covers this
            process's share of the evaluation set exactly once.
        settings: loop hyper-parameters (``ndkd.config.TrainConfig``): the optimizer
            (:func:`ndkd.engine.optim.build_optimizer`) and its schedule, gradient-norm
            clipping (``clip_grad_norm``, on unscaled gradients), and with ``ema_decay`` > 0 an
            EMA of the student (:class:`ndkd.engine.ema.ModelEma`, updated after every step,
            evaluated with the student as ``ema_``-prefixed metrics, checkpointed as
            ``"ema"``). ``run_dir``: the run folder (rank 0 writes).
        config: the resolved config, stored in checkpoints.
        progress: optional callback receiving :class:`ndkd.progress.Progress` (phase
            ``"train"``) at each epoch end and, when ``progress_every`` > 0, every that many
            steps (each such report is one host-device sync; 0: no sync inside an epoch).
        sync_every: with several processes, every that many steps they agree on a stop
            signal and on a checkpoint due by the clock (one small all-reduce); 0: only at
            epoch ends. Unused with one process, which checks after every step for free.
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
        sync_every: int = 20,
        sinks: Iterable[Any] = (),
        teacher_batch_stats: bool = False,
    ) -> None:
        self.task = task
        self.student, self.teacher, self.method = student, teacher, method
        self.train_loader, self.test_loader = train_loader, test_loader
        self.settings, self.device, self.dist = settings, device, dist_info
        self.run_dir = Path(run_dir)
        self.config = config or {}
        self.progress = progress
        self.progress_every = progress_every
        self.sync_every = sync_every
        self.sinks = list(sinks)
        self.memory_format = torch.channels_last if settings.channels_last else None
        if self.memory_format is not None:
            student.to(memory_format=self.memory_format)
            if teacher is not None:
                teacher.to(memory_format=self.memory_format)
        self.teacher_forward: nn.Module | None = None
        self._teacher_norms: list[nn.Module] = []
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            if teacher_batch_stats:
                self.teacher_forward = teacher
                self._teacher_norms = [m for m in teacher.modules() if isinstance(m, _BatchNorm)]
                if not self._teacher_norms:
                    log.warning("teacher batch statistics asked for, but it has no BatchNorm")
            else:
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
        self.optimizer = build_optimizer((student, method), settings)
        self.scheduler = build_scheduler(self.optimizer, settings, len(train_loader))
        self.epochs, self._final_steps = planned_epochs(settings, len(train_loader))
        self._trained = trained_parameters(self.optimizer)
        self.ema = ModelEma(student, settings.ema_decay) if settings.ema_decay > 0 else None
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.amp)
        self.autocast = (
            (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.amp == "fp16")
        self.start_epoch = 0
        self.start_step = 0
        self.history: list[dict[str, Any]] = []
        self.best_metric = -math.inf
        self._resumed_totals: dict[str, Any] | None = None
        self._saved_at = (0, 0)  # (finished epochs, steps into the next) of the last checkpoint
        self._last_save = time.monotonic()
        self._signals = StopSignals()

    # ----------------------------------------------------------------- state
    def state(self, epoch: int, partial: EpochTotals | None = None, step: int = 0) -> dict:
        """A checkpoint after ``epoch`` finished epochs and, mid-epoch, ``step`` steps of the
        next one with its running totals (collective: every process calls it). Its tensors
        are the live ones: save it (or copy it) before training on."""
        state = {
            "epoch": epoch,
            "step": step,
            "partial": [] if partial is None else _gather(partial.state_dict()),
            "model": self.student.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": _gather(rng_state()),
            "history": self.history,
            "best_metric": self.best_metric,
            "config": self.config,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def resume(self, state: dict[str, Any] | None = None) -> None:
        """Continue from a checkpoint's ``state`` (default: read ``last.pt``): weights,
        optimizer, schedule, scaler, RNG of every process, metrics history, and a mid-epoch
        position with its running totals, the EMA; ``metrics.jsonl`` is rewritten to match."""
        if state is None:
            state = load_checkpoint(self.run_dir / LAST)
        self.student.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError("the checkpoint holds no EMA weights (written with ema_decay 0)")
            self.ema.load_state_dict(state["ema"])
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
        self.start_step = int(state.get("step", 0))
        self._resumed_totals = state["partial"][self.dist.rank] if self.start_step else None
        self._saved_at = (self.start_epoch, self.start_step)
        if self.dist.is_main:
            MetricsLog(self.run_dir / METRICS).rewrite(self.history)
        log.info("resumed at epoch %d, step %d", self.start_epoch + 1, self.start_step)

    # ------------------------------------------------------------------ loop
    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the metrics history.

        ``last.pt`` is written at every epoch end and, inside epochs, every
        ``checkpoint_every_steps`` steps or ``checkpoint_every_minutes`` minutes (with the
        loader's position: a resume continues with the batches of an uninterrupted run).
        SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption notice) stop the run at the
        next step boundary after writing such a checkpoint, with :class:`RunInterrupted` (a
        second SIGINT stops at once). With one process the signal and the clock are read
        after every step; with several, every ``sync_every`` steps and at epoch ends, so
        every process checkpoints and stops at the same step.
        """
        with StopSignals() as self._signals:
            return self._fit()

    def _fit(self) -> list[dict[str, Any]]:
        metrics = MetricsLog(self.run_dir / METRICS)
        primary = self.task.primary_metric
        epochs = self.epochs
        for epoch in range(self.start_epoch, epochs):
            record = self._train_epoch(epoch)
            broadcast_buffers(self.student)
            if self.ema is not None:
                broadcast_buffers(self.ema.module)
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
            self._saved_at = (epoch + 1, 0)
            if self.progress is not None:
                steps = self._steps_in(epoch)
                self.progress(Progress("train", steps, steps, epoch + 1, epochs, record=record))
            if epoch + 1 < epochs and self._stop_requested(sync_point=True):
                raise self._interrupted(f"at the end of epoch {epoch + 1}")
        return self.history

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self.student.train()
        self.method.train()
        self.train_loader.set_epoch(epoch)
        steps = self._steps_in(epoch)
        first = self.start_step if epoch == self.start_epoch else 0
        totals = EpochTotals(
            self.task.train_meter(self.device, self.teacher is not None),
            self.optimizer.param_groups[0]["lr"],
            self.device,
        )
        if first:
            totals.load_state_dict(self._resumed_totals)
            self.train_loader.start_at(first)
        for step, raw in enumerate(self.train_loader, start=first):
            if step == steps:  # the last epoch of an iteration budget ends early
                break
            batch = self.task.to_device(raw, self.device, self.memory_format, train=True)
            teacher_out = None
            if self.teacher_forward is not None:
                with torch.no_grad(), self.autocast(), self._teacher_train_norms():
                    teacher_out = self.task.forward(self.teacher_forward, batch)
            with self.autocast():
                student_out, losses = self.step_module(batch, teacher_out, epoch)
            self._optimizer_step(sum(value.float() for value in losses.values()))
            totals.add(losses, step)
            totals.meter.update(student_out, teacher_out, batch)
            if step + 1 < steps:
                self._between_steps(epoch, step + 1, steps, totals)
        self._check_finite(totals, epoch)
        record = totals.record(epoch, steps, self.dist.world_size)
        if self.settings.iterations:
            record["iteration"] = epoch * len(self.train_loader) + steps
        return record

    @contextmanager
    def _teacher_train_norms(self) -> Iterator[None]:
        """The teacher's BatchNorms in training mode inside (none without
        ``teacher_batch_stats``), back in eval mode after."""
        for norm in self._teacher_norms:
            norm.train()
        try:
            yield
        finally:
            for norm in self._teacher_norms:
                norm.eval()

    def _steps_in(self, epoch: int) -> int:
        """Optimizer steps of ``epoch``: a whole pass, or what the iteration budget leaves."""
        return self._final_steps if epoch + 1 == self.epochs else len(self.train_loader)

    def _optimizer_step(self, total: torch.Tensor) -> None:
        """Backward, gradient-norm clipping when on, step, schedule, EMA update."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.settings.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients (no-op without fp16)
            torch.nn.utils.clip_grad_norm_(self._trained, self.settings.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update()

    def _between_steps(self, epoch: int, done: int, steps: int, totals: EpochTotals) -> None:
        """After step ``done`` of an epoch: progress, a mid-epoch checkpoint when due, a stop
        when asked (checked at sync points only when several processes run)."""
        every = self.progress_every
        report = self.progress is not None and every > 0 and done % every == 0
        if report:
            self._check_finite(totals, epoch)
            means = totals.means(done)
            self.progress(Progress("train", done, steps, epoch + 1, self.epochs, means))
        sync_point = not self.dist.enabled or (self.sync_every > 0 and done % self.sync_every == 0)
        stop = self._stop_requested(sync_point)
        if stop or self._checkpoint_due(done, sync_point):
            self._check_finite(totals, epoch)
            state = self.state(epoch, totals, done)  # collective: every rank
            if self.dist.is_main:
                self._save(state, f"epoch {epoch + 1} step {done}")
            barrier()
            self._saved_at = (epoch, done)
        if stop:
            raise self._interrupted(f"in epoch {epoch + 1} after step {done}/{steps}")

    def _checkpoint_due(self, done: int, sync_point: bool) -> bool:
        every_steps = self.settings.checkpoint_every_steps
        if every_steps and done % every_steps == 0:
            return True
        minutes = self.settings.checkpoint_every_minutes
        if not minutes or not sync_point:
            return False
        due = time.monotonic() - self._last_save >= 60 * minutes
        return bool(self._max_over_processes(int(due)))

    def _stop_requested(self, sync_point: bool) -> bool:
        """Whether a stop signal arrived (agreed by all processes at sync points)."""
        if not sync_point:
            return False
        signum = self._max_over_processes(self._signals.signum or 0)
        self._signals.signum = signum or None
        return bool(signum)

    def _max_over_processes(self, value: int) -> int:
        """The largest ``value`` of all processes, on every process (identity for one)."""
        if not self.dist.enabled:
            return value
        tensor = torch.tensor([value], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def _interrupted(self, where: str) -> RunInterrupted:
        return RunInterrupted(
            self._signals.signum,
            f"stopped by {self._signals.name()} {where}; {self._checkpoint_status()}",
        )

    def _checkpoint_status(self) -> str:
        """Where the last checkpoint written (or resumed from) stands."""
        epochs, step = self._saved_at
        if (epochs, step) == (0, 0):
            return "no checkpoint was written yet (--resume starts the run again at epoch 1)"
        where = f"after epoch {epochs}" if not step else f"epoch {epochs + 1}, step {step}"
        return f"the last checkpoint is {self.run_dir / LAST} ({where})"

    def _check_finite(self, totals: EpochTotals, epoch: int) -> None:
        """Stop every process if any saw a non-finite term (one sync per call)."""
        bad = totals.first_non_finite(self.dist.enabled)
        if bad is not None:
            step, name = bad
            raise NonFiniteLossError(
                f"loss term {name!r} became non-finite at epoch {epoch + 1}, step "
                f"{step + 1}; training stopped; {self._checkpoint_status()}"
            )

    def _save(self, state: dict[str, Any], what: str) -> None:
        """Write ``last.pt`` (atomic); a failed write says what is intact."""
        try:
            save_checkpoint(self.run_dir / LAST, state)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as either
            raise self._write_error(what, error) from error
        self._last_save = time.monotonic()

    def _write(self, state, record, is_best: bool, metrics: MetricsLog) -> None:
        """An epoch end: checkpoints first (atomic), then the metrics line."""
        what = f"epoch {record['epoch']}"
        self._save(state, what)
        try:
            if is_best:
                save_checkpoint(self.run_dir / BEST, state)
            metrics.append(record)
            for sink in self.sinks:
                sink.append(record)
        except (OSError, RuntimeError) as error:
            raise self._write_error(what, error) from error

    def _write_error(self, what: str, error: BaseException) -> RunWriteError:
        reason = getattr(error, "strerror", None) or str(error)
        return RunWriteError(
            f"could not write the run folder {self.run_dir} at {what} ({reason}); "
            f"{self._checkpoint_status()}"
        )

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation metrics of the student and, when kept, of its EMA (the same
        keys prefixed ``ema_``), summed over processes."""
        args = (self.test_loader, self.device, self.autocast, self.memory_format)
        metrics = self.task.evaluate(self.student, *args)
        if self.ema is not None:
            ema = self.task.evaluate(self.ema.module, *args)
            metrics.update({f"ema_{key}": value for key, value in ema.items()})
        return metrics


def _gather(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process's ``state``, in rank order (a checkpoint restores each its own)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered
