"""Export a trained run's student (safetensors, ONNX, TorchScript) with a model card."""

from ndkd.export.classifier import LogitsOnly
from ndkd.export.core import CHECKPOINTS, FORMATS, ExportResult, export_run
from ndkd.export.detector import DetectionsOnly, ImageDetections

__all__ = [
    "CHECKPOINTS",
    "FORMATS",
    "DetectionsOnly",
    "ExportResult",
    "ImageDetections",
    "LogitsOnly",
    "export_run",
]
