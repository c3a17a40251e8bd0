"""``ndkd export``: a run's student alone (no method modules, optimizer or teacher), in eval
mode, wrapped so that ``forward(images)`` returns the logits tensor only, written as

- ``safetensors``: the student's state dict in its source's own key layout (a
  ``torchvision:``/``timm:`` student loads back with that library's constructor and
  ``load_state_dict``), with the resolved ``config.yaml`` beside it;
- ``torchscript``: ``torch.jit.trace`` of the wrapper;
- ``onnx``: ``torch.onnx.export`` of the wrapper (the dynamo exporter, else the
  TorchScript-based one), with a dynamic batch axis.

Each export is loaded back and run on a few batches of the run's test split (its own eval
transform and loader); its logits are compared with the PyTorch student's. The output folder
(model file, ``config.yaml``, model card ``README.md``) is written under a temporary name and
renamed into place, so an interrupted export leaves nothing at the output path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from ndkd.analysis.runs import CONFIG, TASK_METRICS, Run, read_run
from ndkd.config import RunConfig, dump_config
from ndkd.experiment import trained_student
from ndkd.experiment.models import build_model

log = logging.getLogger(__name__)

FORMATS = ("safetensors", "onnx", "torchscript")
CHECKPOINTS = ("last", "best")
FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}
CARD = "README.md"
CHECK_BATCHES = 3
RTOL = ATOL = 1e-4
"""A check passes when every logit satisfies ``|exported - pytorch| <= ATOL + RTOL*|pytorch|``
(fp32 on the CPU)."""


class LogitsOnly(nn.Module):
    """``forward(images)`` -> the student's logits ``[B, C]`` (the tensor only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


@dataclass
class ExportResult:
    """What :func:`export_run` wrote and how its check went."""

    folder: Path
    model_file: Path
    format: str
    exporter: str
    max_abs_diff: float
    samples: int
    passed: bool
    num_classes: int
    in_channels: int


def export_run(
    run_dir: str | os.PathLike[str],
    fmt: str,
    *,
    checkpoint: str = "last",
    output: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export the student of ``run_dir`` (weights of ``{checkpoint}.pt``) in ``fmt`` to the
    folder ``output`` (default: ``run_dir/export-{fmt}-{checkpoint}``).

    Raises:
        ValueError: an unknown format or checkpoint, a run folder without ``config.yaml``,
            ``metrics.jsonl`` or the checkpoint, a detection run, an existing output without
            ``overwrite``, or exported logits that differ from the student's beyond the
            tolerance (nothing is written then).
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format: unknown {fmt!r}; expected one of {', '.join(FORMATS)}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint: unknown {checkpoint!r}; expected last or best")
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ValueError(f"{run_dir}: no {CONFIG}; expected a run folder written by ndkd train")
    weights = run_dir / f"{checkpoint}.pt"
    if not weights.is_file():
        raise ValueError(f"{run_dir}: no {weights.name}; the run has not written that checkpoint")
    target = Path(output) if output is not None else run_dir / f"export-{fmt}-{checkpoint}"
    if target.exists() and not overwrite:
        raise ValueError(f"{target}: exists; pass --overwrite to replace it")
    run = read_run(run_dir)
    config = run.config
    if config.task == "detection":
        raise ValueError(
            "detection students cannot be exported yet (their forward returns boxes, not "
            "one logits tensor); classification and multilabel runs can"
        )
    if not run.complete:
        log.warning(
            "%s is unfinished: exporting after epoch %d of %d",
            run_dir,
            run.epochs_completed,
            run.epochs_planned,
        )
    # on the CPU, and no initial weights (no download): the checkpoint's weights replace them
    built = dataclasses.replace(
        config,
        device="cpu",
        student=dataclasses.replace(config.student, checkpoint=None, pretrained=False),
    )
    student, data, device, task = trained_student(built, weights, join_process_group=False)
    student.eval()
    images = _test_batches(data.test_loader, task, device)
    with torch.no_grad():
        reference = [student(batch).logits.float() for batch in images]

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        model_file = staging / FILES[fmt]
        wrapper = LogitsOnly(student).eval()
        exporter = _WRITERS[fmt](wrapper, student, images[0], model_file)
        outputs = _READERS[fmt](model_file, config, data.num_classes, data.in_channels, images)
        diff = max(float((out - ref).abs().max()) for out, ref in zip(outputs, reference))
        passed = all(
            torch.allclose(out, ref, rtol=RTOL, atol=ATOL) for out, ref in zip(outputs, reference)
        )
        samples = sum(batch.shape[0] for batch in images)
        if not passed:
            raise ValueError(
                f"{fmt} export ({exporter}) differs from the PyTorch student: max abs diff "
                f"{diff:.3g} on {samples} test images (tolerance {ATOL:g} abs + {RTOL:g} rel); "
                "nothing written"
            )
        (staging / CONFIG).write_text(dump_config(config))
        result = ExportResult(
            target,
            target / FILES[fmt],
            fmt,
            exporter,
            diff,
            samples,
            passed,
            data.num_classes,
            data.in_channels,
        )
        (staging / CARD).write_text(model_card(run, config, checkpoint, result))
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s to %s (%s; max abs diff %.3g)", run_dir, target, exporter, diff)
    return result


def _test_batches(loader, task, device: torch.device) -> list[torch.Tensor]:
    batches = []
    for raw in loader:
        batches.append(task.to_device(raw, device, None).images.float().contiguous())
        if len(batches) == CHECK_BATCHES:
            break
    if not batches:
        raise ValueError("the run's test split yielded no images to check the export on")
    return batches


def _replace(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``; an existing ``target`` goes only once that succeeds."""
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


# writers: (wrapper, student, example batch, file) -> the exporter used


def _write_safetensors(
    wrapper: nn.Module, student: nn.Module, example: torch.Tensor, path: Path
) -> str:
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return "safetensors"


def _write_torchscript(
    wrapper: nn.Module, student: nn.Module, example: torch.Tensor, path: Path
) -> str:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated")
        traced = torch.jit.trace(wrapper, example)
        traced.save(str(path))
    return "torch.jit.trace"


def _write_onnx(wrapper: nn.Module, student: nn.Module, example: torch.Tensor, path: Path) -> str:
    # one self-contained file unless the weights are too big for one protobuf (2 GiB)
    external = sum(t.numel() * t.element_size() for t in student.state_dict().values()) > 2**30
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
        _check_onnx(path)
        log.info("ONNX: exported with the dynamo exporter")
        return "torch.onnx.export(dynamo=True)"
    except Exception as error:  # missing onnxscript, an unsupported op, a failed check
        log.warning(
            "ONNX: the dynamo exporter failed (%s); using the TorchScript-based exporter",
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".data").unlink(missing_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            external_data=external,
        )
    _check_onnx(path)
    return "torch.onnx.export(dynamo=False)"


def _check_onnx(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path))


# readers: (file, config, classes, channels, batches) -> logits per batch


def _read_safetensors(
    path: Path, config: RunConfig, classes: int, channels: int, batches: list[torch.Tensor]
) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    model = fresh_student(config, classes, channels)
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval()
    with torch.no_grad():
        return [model(batch).logits.float() for batch in batches]


def fresh_student(config: RunConfig, classes: int, channels: int) -> nn.Module:
    """A fresh, randomly initialised student of ``config`` (no checkpoint, no download)."""
    spec = dataclasses.replace(config.student, checkpoint=None, pretrained=False)
    return build_model(spec, "student", classes, channels, torch.device("cpu"))


def _read_torchscript(
    path: Path, config: RunConfig, classes: int, channels: int, batches: list[torch.Tensor]
) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated")
        model = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return [model(batch).float() for batch in batches]


def _read_onnx(
    path: Path, config: RunConfig, classes: int, channels: int, batches: list[torch.Tensor]
) -> list[torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [torch.from_numpy(session.run(None, {name: b.numpy()})[0]).float() for b in batches]


_WRITERS = {
    "safetensors": _write_safetensors,
    "torchscript": _write_torchscript,
    "onnx": _write_onnx,
}
_READERS = {"safetensors": _read_safetensors, "torchscript": _read_torchscript, "onnx": _read_onnx}


# the model card


def model_card(run: Run, config: RunConfig, checkpoint: str, result: ExportResult) -> str:
    """The ``README.md`` beside an export: recipe, config, metrics, versions, check, usage."""
    import ndkd

    primary = TASK_METRICS[config.task][0]
    last = run.last(primary.key)
    best = run.best(primary.key)
    last_text = f"{last:.2f}" if last is not None else "not logged"
    best_text = f"{best[0]:.2f} (epoch {best[1]})" if best is not None else "not logged"
    terms = ", ".join(f"{t.name} x{t.weight:g}" for t in config.terms) or "none"
    status = "complete" if run.complete else "UNFINISHED"
    check = "passed" if result.passed else "FAILED"
    lines = [
        *hub_front_matter(config, result.format),
        f"# {config.recipe or 'ndkd run'}: {config.student.arch} student",
        "",
        f"Exported by `ndkd export` from `{run.path}` (`{checkpoint}.pt`) as **{result.format}**.",
        "",
        "| | |",
        "|---|---|",
        f"| recipe | {config.recipe or '(none)'} |",
        f"| task | {config.task} |",
        f"| student | {config.student.arch} |",
        f"| teacher | {config.teacher.arch or 'none'} |",
        f"| data | {config.data.name} |",
        f"| terms | {terms} |",
        f"| seed | {config.seed} |",
        f"| epochs | {run.epochs_completed} of {run.epochs_planned} ({status}) |",
        f"| test {primary.label}, last epoch ({run.epochs_completed}) | {last_text} |",
        f"| test {primary.label}, best epoch | {best_text} |",
        f"| checkpoint exported | {checkpoint}.pt |",
        f"| ndkd / torch | {ndkd.__version__} / {torch.__version__} |",
        f"| format | {result.format} ({result.exporter}) |",
        f"| check | {check}: max abs diff {result.max_abs_diff:.3g} vs the PyTorch student on "
        f"{result.samples} test images (tolerance {ATOL:g} abs + {RTOL:g} rel) |",
        "",
        "Metrics are the run's `metrics.jsonl` (percent); the last epoch is the reported "
        "number, the best epoch is shown apart.",
        "",
        "## Load it",
        "",
        "```python",
        *_USAGE[result.format](config, result.num_classes, result.in_channels),
        "```",
        "",
        f"Inputs: float32 images `[B, {result.in_channels}, H, W]`, normalised as the run's "
        "eval transform does (see `config.yaml`); output: logits `[B, C]`.",
        "",
        "## Resolved config",
        "",
        "```yaml",
        dump_config(config).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def hub_front_matter(config: RunConfig, fmt: str) -> list[str]:
    """The card's YAML header for the Hugging Face Hub (library, tags, pipeline), then a blank
    line."""
    tags = ["knowledge-distillation", "ndkd", fmt, config.task]
    if config.data.name:
        tags.append(str(config.data.name))
    header = {"library_name": "ndkd", "tags": list(dict.fromkeys(tags))}
    if config.task in ("classification", "multilabel"):
        header["pipeline_tag"] = "image-classification"
    return ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", ""]


def _usage_safetensors(config: RunConfig, classes: int, channels: int) -> list[str]:
    arch = config.student.arch
    name = arch.partition(":")[2]
    lines = ["from safetensors.torch import load_file", ""]
    if arch.startswith("torchvision:"):
        lines += [
            "import torchvision",
            "",
            f"model = torchvision.models.get_model({name!r}, num_classes={classes})",
        ]
        if channels != 3 or config.student.pool or config.student.embedding_dim:
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
    lines += [
        'model.load_state_dict(load_file("model.safetensors"))',
        "model.eval()",
    ]
    return lines


def _usage_torchscript(config: RunConfig, classes: int, channels: int) -> list[str]:
    return [
        "import torch",
        "",
        'model = torch.jit.load("model.pt")',
        "logits = model(images)  # [B, C]",
    ]


def _usage_onnx(config: RunConfig, classes: int, channels: int) -> list[str]:
    return [
        "import onnxruntime",
        "",
        'session = onnxruntime.InferenceSession("model.onnx")',
        'logits = session.run(None, {"images": images_numpy})[0]  # [B, C]',
    ]


_USAGE = {"safetensors": _usage_safetensors, "torchscript": _usage_torchscript, "onnx": _usage_onnx}
