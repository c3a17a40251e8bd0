"""Export a trained run's student (safetensors, ONNX, TorchScript) with a model card."""

from ndkd.export.core import (
    CHECKPOINTS,
    FORMATS,
    ExportResult,
    LogitsOnly,
    export_run,
)

__all__ = ["CHECKPOINTS", "FORMATS", "ExportResult", "LogitsOnly", "export_run"]
