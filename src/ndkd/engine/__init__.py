"""The training engine: one loop for every task and method, checkpoints, schedules,
distribution."""

from ndkd.engine.checkpoint import load_checkpoint, save_checkpoint
from ndkd.engine.distributed import DistInfo, init_distributed, read_env
from ndkd.engine.epoch_totals import NonFiniteLossError
from ndkd.engine.metrics import MetricsLog, read_metrics
from ndkd.engine.schedule import lr_factor
from ndkd.engine.settings import LoopSettings
from ndkd.engine.stop_signals import RunInterrupted
from ndkd.engine.trainer import BEST, LAST, METRICS, RunWriteError, Trainer

__all__ = [
    "BEST",
    "LAST",
    "METRICS",
    "DistInfo",
    "LoopSettings",
    "MetricsLog",
    "NonFiniteLossError",
    "RunInterrupted",
    "RunWriteError",
    "Trainer",
    "init_distributed",
    "load_checkpoint",
    "lr_factor",
    "read_env",
    "read_metrics",
    "save_checkpoint",
]
