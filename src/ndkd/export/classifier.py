"""A classifier student (classification, multilabel) as exported: ``forward(images)``
returns the logits tensor only (:class:`LogitsOnly`; the output contract's dataclass does not
export). TorchScript by ``torch.jit.trace``; ONNX by the dynamo exporter, else the
TorchScript-based one, with a dynamic batch axis."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ndkd.export.student import (
    ATOL,
    RTOL,
    Check,
    StudentExport,
    check_onnx,
    jit_load,
    onnx_by_tracing,
    onnx_session,
)

log = logging.getLogger(__name__)


class LogitsOnly(nn.Module):
    """``forward(images)`` -> the student's logits ``[B, C]`` (the tensor only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


class ClassifierExport(StudentExport):
    """Images ``[B, C, H, W]`` in, logits ``[B, C]`` out; the check compares every logit."""

    pipeline_tag = "image-classification"

    def inputs(self, loader: Any, task: Any, batches: int) -> list[torch.Tensor]:
        found = []
        for raw in loader:
            found.append(task.to_device(raw, torch.device("cpu"), None).images.float())
            if len(found) == batches:
                break
        if not found:
            raise ValueError("the run's test split yielded no images to check the export on")
        return [batch.contiguous() for batch in found]

    def reference(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return _logits(self.student, inputs)

    def write(self, fmt: str, path: Path, inputs: list[torch.Tensor]) -> str:
        if fmt == "safetensors":
            return self.write_safetensors(path)
        wrapper = LogitsOnly(self.student).eval()
        if fmt == "torchscript":
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated")
                torch.jit.trace(wrapper, inputs[0]).save(str(path))
            return "torch.jit.trace"
        return self._write_onnx(wrapper, inputs[0], path)

    def _write_onnx(self, wrapper: nn.Module, example: torch.Tensor, path: Path) -> str:
        external = self.weights_over_protobuf_limit()
        try:
            with torch.no_grad():
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(path),
                    dynamo=True,
                    input_names=["images"],
                    output_names=["logits"],
                    dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                    external_data=external,
                    verbose=False,
                )
            check_onnx(path)
            log.info("ONNX: exported with the dynamo exporter")
            return "torch.onnx.export(dynamo=True)"
        except Exception as error:  # missing onnxscript, an unsupported op, a failed check
            log.warning(
                "ONNX: the dynamo exporter failed (%s); using the TorchScript-based exporter",
                str(error).splitlines()[0] if str(error) else type(error).__name__,
            )
        axes = {"images": {0: "batch"}, "logits": {0: "batch"}}
        return onnx_by_tracing(wrapper, (example,), path, (["images"], ["logits"]), axes, external)

    def read(self, fmt: str, path: Path, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if fmt == "safetensors":
            return _logits(self.read_safetensors(path), inputs)
        if fmt == "torchscript":
            model = jit_load(path)
            with torch.no_grad():
                return [model(batch).float() for batch in inputs]
        session = onnx_session(path)
        name = session.get_inputs()[0].name
        return [torch.from_numpy(session.run(None, {name: b.numpy()})[0]).float() for b in inputs]

    def compare(self, outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> Check:
        diff = max(float((out - ref).abs().max()) for out, ref in zip(outputs, reference))
        passed = all(
            out.shape == ref.shape and torch.allclose(out, ref, rtol=RTOL, atol=ATOL)
            for out, ref in zip(outputs, reference)
        )
        images = sum(ref.shape[0] for ref in reference)
        return Check(diff, passed, images, f"{images * reference[0].shape[1]} logits")

    def usage(self, fmt: str) -> list[str]:
        if fmt == "torchscript":
            return [
                "import torch",
                "",
                'model = torch.jit.load("model.pt")',
                "logits = model(images)  # [B, C]",
            ]
        if fmt == "onnx":
            return [
                "import onnxruntime",
                "",
                'session = onnxruntime.InferenceSession("model.onnx")',
                'logits = session.run(None, {"images": images_numpy})[0]  # [B, C]',
            ]
        return [
            *self._constructor(),
            'model.load_state_dict(load_file("model.safetensors"))',
            "model.eval()",
        ]

    def _constructor(self) -> list[str]:
        arch, classes, channels = self.config.student.arch, self.num_classes, self.in_channels
        name = arch.partition(":")[2]
        lines = ["from safetensors.torch import load_file", ""]
        if arch.startswith("torchvision:"):
            lines += [
                "import torchvision",
                "",
                f"model = torchvision.models.get_model({name!r}, num_classes={classes})",
            ]
            if channels != 3 or self.config.student.pool or self.config.student.embedding_dim:
                lines.append(
                    "# this run changed the stem conv or the head: build the model with "
                    "ndkd.models.create_model as config.yaml says"
                )
        elif arch.startswith("timm:"):
            lines += [
                "import timm",
                "",
                f"model = timm.create_model({name!r}, num_classes={classes}, in_chans={channels})",
            ]
        else:
            lines += [
                "from ndkd.models import create_model",
                "",
                f"model = create_model({arch!r}, {classes}, in_channels={channels})",
            ]
        return lines

    def contract(self) -> str:
        return (
            f"Inputs: float32 images `[B, {self.in_channels}, H, W]`, normalised as the run's "
            "eval transform does (see `config.yaml`); output: logits `[B, C]`."
        )


def _logits(model: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """``model``'s (eager, output contract) float32 logits of each batch."""
    with torch.no_grad():
        return [model(batch).logits.float() for batch in inputs]
