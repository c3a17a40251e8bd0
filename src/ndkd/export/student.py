"""What every exported student shares: the interface :func:`ndkd.export.export_run` drives
(:class:`StudentExport`), the safetensors file (the state dict in its source's key layout),
a fresh student of a run's config, and the TorchScript-based ONNX exporter."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ndkd.config import RunConfig
from ndkd.experiment.models import build_model

log = logging.getLogger(__name__)

FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}
RTOL = ATOL = 1e-4
"""A check passes when every exported number satisfies
``|exported - pytorch| <= ATOL + RTOL*|pytorch|`` (fp32 on the CPU)."""
TOLERANCE = f"{ATOL:g} abs + {RTOL:g} rel"


@dataclass(frozen=True)
class Check:
    """How the exported model's outputs compared with the PyTorch student's on the run's
    test images: the largest absolute difference, whether every number was within the
    tolerance, how many images, and what was compared (e.g. ``"120 detections"``)."""

    max_abs_diff: float
    passed: bool
    images: int
    compared: str


class StudentExport(ABC):
    """A trained student of one kind (classifier, detector) as :func:`export_run` exports it:
    the check's inputs and PyTorch outputs, a writer and a reader per format, the comparison
    and the model card's task-specific lines."""

    pipeline_tag: str | None = None
    """The Hugging Face Hub's task tag of the model card (``None``: none)."""

    def __init__(self, student: nn.Module, config: RunConfig, data: Any, task: Any) -> None:
        self.student = student.eval()
        self.config = config
        self.num_classes = data.num_classes
        self.in_channels = data.in_channels

    @abstractmethod
    def inputs(self, loader: Any, task: Any, batches: int) -> list[Any]:
        """Up to ``batches`` batches of the test ``loader``, as the exported model takes them.

        Raises:
            ValueError: the loader yields nothing.
        """

    @abstractmethod
    def reference(self, inputs: list[Any]) -> list[Any]:
        """The PyTorch student's (eager) outputs of each batch, as the export returns them."""

    @abstractmethod
    def write(self, fmt: str, path: Path, inputs: list[Any]) -> str:
        """Write the student in ``fmt`` to ``path``; returns the exporter used."""

    @abstractmethod
    def read(self, fmt: str, path: Path, inputs: list[Any]) -> list[Any]:
        """Load ``path`` (written in ``fmt``) back and run it on each batch of ``inputs``."""

    @abstractmethod
    def compare(self, outputs: list[Any], reference: list[Any]) -> Check:
        """The exported outputs against the PyTorch student's, batch by batch."""

    @abstractmethod
    def usage(self, fmt: str) -> list[str]:
        """The model card's Python lines that load the ``fmt`` export and run it."""

    @abstractmethod
    def contract(self) -> str:
        """The model card's sentence on the exported model's inputs and outputs."""

    def fresh(self) -> nn.Module:
        """A fresh, randomly initialised student of the run's config in eval mode."""
        return fresh_student(self.config, self.num_classes, self.in_channels).eval()

    def write_safetensors(self, path: Path) -> str:
        """The student's state dict, in its source's own key layout."""
        save_safetensors(self.student, path)
        return "safetensors"

    def read_safetensors(self, path: Path) -> nn.Module:
        """A fresh student with the weights of ``path`` (strictly: every key, no other)."""
        from safetensors.torch import load_file

        model = self.fresh()
        model.load_state_dict(load_file(str(path)), strict=True)
        return model

    def weights_over_protobuf_limit(self) -> bool:
        """Whether the weights pass 1 GiB, half the 2 GiB limit of one ONNX protobuf (room
        for the graph): then they go to a ``.data`` file beside it."""
        state = self.student.state_dict().values()
        return sum(t.numel() * t.element_size() for t in state) > 2**30


def fresh_student(config: RunConfig, classes: int, channels: int) -> nn.Module:
    """A fresh, randomly initialised student of ``config`` on the CPU (no checkpoint, no
    download)."""
    spec = dataclasses.replace(config.student, checkpoint=None, pretrained=False)
    return build_model(spec, "student", classes, channels, torch.device("cpu"))


def save_safetensors(model: nn.Module, path: Path) -> None:
    """``model``'s state dict as a safetensors file (its own key layout)."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def onnx_by_tracing(
    module: nn.Module,
    example: tuple[Any, ...],
    path: Path,
    names: tuple[Sequence[str], Sequence[str]],
    dynamic_axes: dict[str, dict[int, str]],
    external: bool,
) -> str:
    """``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``), then
    ``onnx.checker``; returns the exporter's name."""
    inputs, outputs = names
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated")
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
            external_data=external,
        )
    check_onnx(path)
    return "torch.onnx.export(dynamo=False)"


def check_onnx(path: Path) -> None:
    """``onnx.checker`` on the written file (raises on an invalid model)."""
    import onnx

    onnx.checker.check_model(str(path))


def jit_load(path: Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on the CPU, without the deprecation notice of TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated")
        return torch.jit.load(str(path), map_location="cpu")


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session of ``path``."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
