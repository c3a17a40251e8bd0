"""``ndkd export``: a run's student alone (no method modules, optimizer or teacher), in eval
mode, in the form its task deploys (:mod:`ndkd.export.classifier`: logits only;
:mod:`ndkd.export.detector`: torchvision's detections), written as

- ``safetensors``: the student's state dict in its source's own key layout (a
  ``torchvision:``/``timm:`` student loads back with that library's constructor and
  ``load_state_dict``), with the resolved ``config.yaml`` beside it;
- ``torchscript``: a trace (classifiers) or ``torch.jit.script`` (detectors);
- ``onnx``: ``torch.onnx.export`` (classifiers: the dynamo exporter, else the
  TorchScript-based one, dynamic batch axis; detectors: the TorchScript-based one, one image
  of any size).

Each export is loaded back and run on a few batches of the run's test split (its own eval
transform and loader); its outputs are compared with the PyTorch student's. The output folder
(model file, ``config.yaml``, model card ``README.md``) is written under a temporary name and
renamed into place, so an interrupted export leaves nothing at the output path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from ndkd.analysis.runs import CONFIG, TASK_METRICS, Run, read_run
from ndkd.config import RunConfig, dump_config
from ndkd.experiment import trained_student
from ndkd.export.classifier import ClassifierExport
from ndkd.export.detector import DetectorExport
from ndkd.export.student import FILES, TOLERANCE, StudentExport

log = logging.getLogger(__name__)

FORMATS = ("safetensors", "onnx", "torchscript")
CHECKPOINTS = ("last", "best")
CARD = "README.md"
CHECK_BATCHES = 3
KINDS: dict[str, type[StudentExport]] = {
    "classification": ClassifierExport,
    "multilabel": ClassifierExport,
    "detection": DetectorExport,
}
"""The exported form of each task's student."""


@dataclass
class ExportResult:
    """What :func:`export_run` wrote and how its check went (``compared``: what was compared,
    e.g. ``"4000 logits"``, ``"300 detections"``)."""

    folder: Path
    model_file: Path
    format: str
    exporter: str
    max_abs_diff: float
    samples: int
    passed: bool
    compared: str


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
            ``metrics.jsonl`` or the checkpoint, an existing output without ``overwrite``, or
            exported outputs (logits, detections) that differ from the student's beyond the
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
    student, data, _, task = trained_student(built, weights, join_process_group=False)
    kind = KINDS[config.task](student, config, data, task)
    inputs = kind.inputs(data.test_loader, task, CHECK_BATCHES)
    reference = kind.reference(inputs)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        model_file = staging / FILES[fmt]
        exporter = kind.write(fmt, model_file, inputs)
        check = kind.compare(kind.read(fmt, model_file, inputs), reference)
        if not check.passed:
            raise ValueError(
                f"{fmt} export ({exporter}) differs from the PyTorch student: max abs diff "
                f"{check.max_abs_diff:.3g} over {check.compared} of {check.images} test images "
                f"(tolerance {TOLERANCE}); nothing written"
            )
        (staging / CONFIG).write_text(dump_config(config))
        result = ExportResult(
            target,
            target / FILES[fmt],
            fmt,
            exporter,
            check.max_abs_diff,
            check.images,
            check.passed,
            check.compared,
        )
        (staging / CARD).write_text(model_card(run, config, checkpoint, result, kind))
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info(
        "exported %s to %s (%s; max abs diff %.3g)", run_dir, target, exporter, result.max_abs_diff
    )
    return result


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


# the model card


def model_card(
    run: Run, config: RunConfig, checkpoint: str, result: ExportResult, kind: StudentExport
) -> str:
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
        *hub_front_matter(config, result.format, kind.pipeline_tag),
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
        f"| check | {check}: max abs diff {result.max_abs_diff:.3g} vs the PyTorch student over "
        f"{result.compared} of {result.samples} test images (tolerance {TOLERANCE}) |",
        "",
        "Metrics are the run's `metrics.jsonl` (percent); the last epoch is the reported "
        "number, the best epoch is shown apart.",
        "",
        "## Load it",
        "",
        "```python",
        *kind.usage(result.format),
        "```",
        "",
        kind.contract(),
        "",
        "## Resolved config",
        "",
        "```yaml",
        dump_config(config).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def hub_front_matter(config: RunConfig, fmt: str, pipeline_tag: str | None) -> list[str]:
    """The card's YAML header for the Hugging Face Hub (library, tags, pipeline), then a blank
    line."""
    tags = ["knowledge-distillation", "ndkd", fmt, config.task]
    if config.data.name:
        tags.append(str(config.data.name))
    header = {"library_name": "ndkd", "tags": list(dict.fromkeys(tags))}
    if pipeline_tag:
        header["pipeline_tag"] = pipeline_tag
    return ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", ""]
