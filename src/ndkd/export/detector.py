"""A detection student as exported: torchvision's own inference contract. The exported
model is the student as its plain torchvision class (``FasterRCNN`` or ``RetinaNet``, without
ndkd's mixin) whose ``transform`` is the run's evaluation transform, so it takes images of
any size as they are read (``float32`` ``[3, H, W]`` in [0, 1]), resizes and normalises them
itself, and returns each image's detections in that image's pixels: what the run's
evaluation scores (:meth:`ndkd.tasks.detection.DetectionTask.evaluate`).

- TorchScript: ``torch.jit.script`` (torchvision's detectors are scriptable; a trace would
  freeze the number of detections), wrapped to return the detections only
  (:class:`DetectionsOnly`): a list of images in, a list of
  ``{"boxes", "scores", "labels"}`` out.
- ONNX: one image in (``image`` ``[3, H, W]``, height and width dynamic), ``boxes``
  ``[N, 4]``, ``scores`` ``[N]``, ``labels`` ``[N]`` out (:class:`ImageDetections`), by the
  TorchScript-based exporter: the dynamo exporter cannot export the data-dependent shapes of
  the proposals and NMS (``torch.export`` fails on them after about a minute; measured with
  ``fasterrcnn_resnet18_fpn``), whereas torchvision supports the TorchScript-based path.

The check matches detections rather than comparing them in order (:func:`match_detections`):
detections of equal score may come out in another order. Every exported detection must have
a PyTorch detection of the same label whose box and score are within the tolerance, and the
other way round; the only detections allowed to stay unmatched are a few (1 % of an image's,
at least one) that tie with at least two others at the lowest score kept, where rounding
decides which of equal candidates survives a cut (top-k candidates, the per-image cap). The
card counts them; an export whose check compared no detection is written with a warning.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ndkd.export.student import (
    ATOL,
    RTOL,
    Check,
    StudentExport,
    jit_load,
    onnx_by_tracing,
    onnx_session,
)
from ndkd.models.detection import PatchClassifier

log = logging.getLogger(__name__)

Detections = dict[str, torch.Tensor]
TIED_SHARE = 0.01
"""At most this share of one side's detections of an image (and at least one) may be
unmatched where they tie at a score cut (:func:`match_detections`)."""
OUTPUTS = ("boxes", "scores", "labels")
_ADOPTED = ("classifier_name", "num_classes", "embedding_dim", "stage_info")


def inference_detector(student: nn.Module, transform: GeneralizedRCNNTransform) -> nn.Module:
    """A copy of ``student`` (an ndkd detector) as its plain torchvision class (RetinaNet's
    ``cls_logits`` a plain ``Conv2d``), in eval mode, with ``transform`` (the run's
    evaluation transform) as its own."""
    torchvision_class = next(c for c in type(student).__mro__ if c in (FasterRCNN, RetinaNet))
    model = copy.deepcopy(student)
    model.__class__ = torchvision_class
    for module in model.modules():
        if isinstance(module, PatchClassifier):  # its properties do not script
            module.__class__ = nn.Conv2d
    for name in _ADOPTED:
        model.__dict__.pop(name, None)
    model.transform = copy.deepcopy(transform)
    return model.eval()


class DetectionsOnly(nn.Module):
    """``forward(images)`` -> the detector's detections only, eager or scripted (a scripted
    torchvision detector returns ``(losses, detections)``)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        found = self.detector(images)
        if torch.jit.is_scripting():
            return found[1]
        return found


class ImageDetections(nn.Module):
    """``forward(image)`` -> ``(boxes, scores, labels)`` of one ``[3, H, W]`` image."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.detector([image])[0]
        return found["boxes"], found["scores"], found["labels"]


class DetectorExport(StudentExport):
    """Images in, per-image boxes, scores and labels out (module documentation)."""

    pipeline_tag = "object-detection"

    def __init__(self, student: nn.Module, config: Any, data: Any, task: Any) -> None:
        super().__init__(student, config, data, task)
        self.transform = task.eval_transform
        self.classes = list(task.classes)
        self.detector = inference_detector(self.student, self.transform)

    def inputs(self, loader: Any, task: Any, batches: int) -> list[list[torch.Tensor]]:
        """The images of up to ``batches`` test batches, each alone (a batch of one): the
        ONNX model takes one image, and a detector's output depends on the batch it is in
        (its images are padded to a common size)."""
        found = []
        for images, *_ in loader:
            found += [[image.float().contiguous()] for image in images]
            batches -= 1
            if batches == 0:
                break
        if not found:
            raise ValueError("the run's test split yielded no images to check the export on")
        return found

    def reference(self, inputs: list[list[torch.Tensor]]) -> list[Detections]:
        """Each image's detections by the student (eager), as the export runs it: on a copy
        of its own, for ``self.detector`` must not run before it is scripted (torchvision's
        ``MultiScaleRoIAlign`` keeps the scales of its first forward, and
        ``torch.jit.script`` would freeze them into the export)."""
        return _detections(inference_detector(self.student, self.transform), inputs)

    def write(self, fmt: str, path: Path, inputs: list[list[torch.Tensor]]) -> str:
        if fmt == "safetensors":
            return self.write_safetensors(path)
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated")
                warnings.filterwarnings("ignore", message=".*always returns a")
                torch.jit.script(DetectionsOnly(self.detector)).save(str(path))
            return "torch.jit.script"
        axes = {"image": {1: "height", 2: "width"}}
        axes.update({name: {0: "detections"} for name in OUTPUTS})
        return onnx_by_tracing(
            ImageDetections(self.detector),
            (inputs[0][0],),
            path,
            (["image"], list(OUTPUTS)),
            axes,
            self.weights_over_protobuf_limit(),
        )

    def read(self, fmt: str, path: Path, inputs: list[list[torch.Tensor]]) -> list[Detections]:
        if fmt == "safetensors":
            reloaded = inference_detector(self.read_safetensors(path), self.transform)
            return _detections(reloaded, inputs)
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*always returns a")
                return _detections(jit_load(path), inputs)
        session = onnx_session(path)
        name = session.get_inputs()[0].name
        found = []
        for image in (image for images in inputs for image in images):
            arrays = session.run(list(OUTPUTS), {name: image.numpy()})
            found.append(_plain(dict(zip(OUTPUTS, map(torch.from_numpy, arrays)))))
        return found

    def compare(self, outputs: list[Detections], reference: list[Detections]) -> Check:
        matches = [match_detections(out, ref) for out, ref in zip(outputs, reference)]
        passed = len(outputs) == len(reference) and all(m.ok for m in matches)
        diff = max((m.max_abs_diff for m in matches), default=0.0)
        count = sum(len(ref["boxes"]) for ref in reference)
        compared = f"{count} detections"
        if count == 0:
            log.warning(
                "the check compared no detections: the student detected nothing above its "
                "score threshold on the %d test images checked",
                len(reference),
            )
        unmatched = sum(m.unmatched_at_cut for m in matches)
        if unmatched:
            compared += f" ({unmatched} unmatched where scores tie at a cut)"
        return Check(diff, passed, len(reference), compared)

    def usage(self, fmt: str) -> list[str]:
        returns = "# per image: boxes [N, 4] (x1, y1, x2, y2 in its pixels), scores, labels"
        if fmt == "torchscript":
            return [
                "import torch",
                "",
                'model = torch.jit.load("model.pt")',
                f"detections = model([image])  {returns}",
            ]
        if fmt == "onnx":
            return [
                "import onnxruntime",
                "",
                'session = onnxruntime.InferenceSession("model.onnx")',
                'boxes, scores, labels = session.run(None, {"image": image_numpy})  # one image',
            ]
        spec = self.config.student
        options = "".join(f", {key}={value!r}" for key, value in spec.options.items())
        min_size, max_size = self.transform.min_size[-1], self.transform.max_size
        mean, std = list(self.transform.image_mean), list(self.transform.image_std)
        return [
            "from safetensors.torch import load_file",
            "from torchvision.models.detection.transform import GeneralizedRCNNTransform",
            "",
            "from ndkd.models import create_model",
            "",
            f"model = create_model({spec.arch!r}, {self.num_classes}{options})",
            'model.load_state_dict(load_file("model.safetensors"))',
            "# the run's evaluation transform (ndkd's training resizes outside the model)",
            f"model.transform = GeneralizedRCNNTransform({min_size}, {max_size}, {mean}, {std})",
            "model.eval()",
            f"detections = model([image])  {returns}",
        ]

    def contract(self) -> str:
        names = ", ".join(f"{label}: {name}" for label, name in enumerate(self.classes) if label)
        return (
            "Inputs: float32 RGB images `[3, H, W]` in [0, 1], any size; the model resizes "
            f"them (shorter side {self.transform.min_size[-1]}, longer at most "
            f"{self.transform.max_size}) and normalises them itself. Outputs per image: "
            "`boxes` `[N, 4]` (x1, y1, x2, y2 in the input image's pixels), `scores` `[N]`, "
            f"`labels` `[N]` ({names})."
        )


@dataclass(frozen=True)
class Match:
    """How two detection sets of one image matched: the largest ``|exported - reference|``
    of a box coordinate or score between matched detections, the detections of either side
    left unmatched (in a match: tied at a score cut), and whether the sets match."""

    max_abs_diff: float
    unmatched_at_cut: int
    ok: bool


def match_detections(exported: Detections, reference: Detections) -> Match:
    """Match ``exported`` to ``reference`` (one image's detections), in both directions: a
    detection is matched when the other side has one of the same label whose box and score
    are within ``ATOL + RTOL * |reference|``. The sets match when at least one detection
    matched and every detection is matched, except a few (:data:`TIED_SHARE` of a side,
    at least one) that tie at a cut: their score equals, within the tolerance, the lowest
    score the other side kept, and the other side kept at least two detections of that
    score. Which of equal candidates survives the top-k candidates or the per-image cap is
    rounding's choice, so such a candidate may be swapped for another of the same score."""
    if len(exported["boxes"]) == 0 or len(reference["boxes"]) == 0:
        both_empty = len(exported["boxes"]) == len(reference["boxes"])
        return Match(0.0 if both_empty else math.inf, 0, both_empty)
    a, b = (
        torch.cat([d["boxes"], d["scores"][:, None]], 1).double() for d in (exported, reference)
    )
    diff = (a[:, None] - b[None]).abs()  # [exported, reference, 5]
    excess = (diff / (ATOL + RTOL * b.abs()[None])).amax(dim=2)
    excess[exported["labels"][:, None] != reference["labels"][None]] = math.inf
    matched = (excess.amin(dim=1) <= 1, excess.amin(dim=0) <= 1)
    tied = (_tied_at_cut(a[:, 4], b[:, 4]), _tied_at_cut(b[:, 4], a[:, 4]))
    rows = matched[0].nonzero().flatten()
    if len(rows) == 0:
        return Match(math.inf, int(len(a) + len(b)), False)
    worst = float(diff[rows, excess[rows].argmin(dim=1)].max())
    unmatched = [~side for side in matched]
    ok = all(
        bool((m | t).all()) and int(u.sum()) <= max(1, int(TIED_SHARE * len(m)))
        for m, t, u in zip(matched, tied, unmatched)
    )
    return Match(worst, int(unmatched[0].sum() + unmatched[1].sum()), ok)


def _tied_at_cut(scores: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Which of ``scores`` equal, within the tolerance, the lowest of ``other`` (the other
    side's scores), provided the other side kept at least two detections of that score."""
    lowest = other.min()
    tolerance = ATOL + RTOL * lowest.abs()
    ties = int(((other - lowest).abs() <= tolerance).sum())
    return ((scores - lowest).abs() <= tolerance) & (ties >= 2)


def _detections(detector: nn.Module, inputs: list[list[torch.Tensor]]) -> list[Detections]:
    """Each image's detections by ``detector`` (an :func:`inference_detector`, or its
    scripted :class:`DetectionsOnly`)."""
    with torch.no_grad():
        return [_plain(found) for images in inputs for found in detector(images)]


def _plain(found: Detections) -> Detections:
    return {
        "boxes": found["boxes"].float(),
        "scores": found["scores"].float(),
        "labels": found["labels"].long(),
    }
