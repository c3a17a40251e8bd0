"""A KD++ Faster R-CNN training step vs the student's own step plus the teacher's forward
(goal: distillation adds no more than the teacher's forward + 10%, ratio <= 1.10).

Three measurements, side by side in one run, through ``ndkd.tasks.DetectionTask`` (its
``forward`` and ``step_losses``, as ``ndkd train`` calls them) on one batch moved to the
device once by ``to_device`` (training transform):
- (a) the student's own step: its training forward (RPN, RoI sampling, box head), the
  detector's four losses, backward, SGD step (``step_losses`` with no term, no teacher);
- (b) the teacher's forward alone, without gradients: its backbone + FPN on the batch and
  its box head on the student's sampled RoIs (fixed, from one sampling pass);
- (c) a KD++ step: (b) and (a) together plus the ``kd`` (T = 1) and ``nd`` terms on the RoI
  rows (C + 1 logits, 1024-d box-head features; random class means), one backward, SGD.

``(c) / ((a) + (b))`` is the ratio; ``(c) - (a) - (b)`` what distillation costs beyond
running the teacher. Each figure is the median wall time of ``--steps`` calls after one
warm-up call of each; the calls alternate (a), (b), (c), (a), ... so that a shared machine's
load swings hit all three alike. Beside the ratio of the medians (the goal's figure) it
prints the median of the per-call ratios, the ratio of the fastest calls and the ratio of
the process CPU times: on a shared machine these agree when the run was quiet. Images are
random, each with a few random boxes; models are randomly initialised (``--pretrained``:
torchvision's ImageNet backbone weights and the recipe's frozen BatchNorm and first stages,
from the local cache or a download) with torchvision's default RPN/RoI settings (``--rois``:
512 sampled RoIs per image).

    python benchmarks/bench_detection_step.py [--size 128 --batch 2 --steps 5]
    python benchmarks/bench_detection_step.py --device cuda --size 800 --batch 8 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import describe_machine, seconds
from ndkd.centers import ClassMeans
from ndkd.config import TermConfig
from ndkd.methods import BuildContext, Distiller
from ndkd.models import create_model
from ndkd.tasks.detection import DetectionTask, teacher_rows


def random_batch(batch: int, size: int, classes: int, seed: int = 0) -> tuple[tuple, tuple]:
    """The loaders' ``(images, targets)``: ``batch`` random ``[3, size, size]`` images in
    [0, 1], each with 1 to 5 random boxes of labels 1..``classes``."""
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for index in range(batch):
        images.append(torch.rand(3, size, size, generator=generator))
        count = int(torch.randint(1, 6, (), generator=generator))
        corner = torch.rand(count, 2, generator=generator) * size * 0.6
        extent = (torch.rand(count, 2, generator=generator) * 0.3 + 0.1) * size
        boxes = torch.cat([corner, (corner + extent).clamp(max=size)], 1)
        labels = torch.randint(1, classes + 1, (count,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels, "image_id": torch.tensor(index + 1)})
    return tuple(images), tuple(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--teacher", default="fasterrcnn_resnet50_fpn")
    parser.add_argument("--student", default="fasterrcnn_resnet18_fpn")
    parser.add_argument("--size", type=int, default=128, help="image side (pixels)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=20, help="object classes C")
    parser.add_argument("--rois", type=int, default=512, help="sampled RoIs per image")
    parser.add_argument("--steps", type=int, default=5, help="timed calls of each")
    parser.add_argument("--pretrained", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(describe_machine())

    torch.manual_seed(0)
    classes = ["__background__", *(str(label) for label in range(1, args.classes + 1))]
    truth = {"images": [], "annotations": [], "categories": []}
    task = DetectionTask(
        classes, truth, list(range(len(classes))), [args.size], args.size, args.size
    )
    options = {"pretrained": args.pretrained, "box_batch_size_per_image": args.rois}
    student = create_model(args.student, len(classes), **options).to(device)
    teacher = create_model(args.teacher, len(classes), **options).to(device)
    teacher = teacher.eval().requires_grad_(False)
    student.train()
    batch = task.to_device(random_batch(args.batch, args.size, args.classes), device, None, True)

    student_probe, teacher_probe = task.probe_rows(student, teacher, batch)
    means = ClassMeans(torch.rand(len(classes), student_probe.embedding.shape[1]) + 0.1)
    context = BuildContext(
        len(classes), student_probe, teacher_probe, means, student=student, teacher=teacher
    )
    terms = [TermConfig("kd", 1.0, 0, {"temperature": 1.0}), TermConfig("nd", 1.0)]
    kdpp = Distiller(terms, context).to(device)
    alone = Distiller([], BuildContext(len(classes), student_probe)).to(device)
    parameters = [*student.parameters(), *kdpp.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    rois = task.sampled_rows(student, batch)  # (b)'s RoIs: one sampling of the student's
    last: dict[str, torch.Tensor] = {}

    def optimize(losses: dict[str, torch.Tensor]) -> None:
        last.update(losses)
        optimizer.zero_grad(set_to_none=True)
        sum(value.float() for value in losses.values()).backward()
        optimizer.step()

    def student_step() -> None:
        optimize(task.step_losses(alone, task.forward(student, batch), None, batch, 0))

    @torch.no_grad()
    def teacher_forward() -> None:
        teacher_rows(task.forward(teacher, batch), rois, batch.images)

    def kdpp_step() -> None:
        with torch.no_grad():
            teacher_out = task.forward(teacher, batch)
        student_out = task.forward(student, batch)
        optimize(task.step_losses(kdpp, student_out, teacher_out, batch, 0))

    print(
        f"{args.teacher} -> {args.student}, {args.batch} images of {args.size}x{args.size}, "
        f"C = {args.classes}, {len(rois.labels)} RoI rows per step, {device}"
    )
    steps = {"a": student_step, "b": teacher_forward, "c": kdpp_step}
    wall: dict[str, list[float]] = {key: [] for key in steps}
    cpu: dict[str, list[float]] = {key: [] for key in steps}
    for fn in steps.values():  # warm-up: one call of each
        fn()
    for _ in range(args.steps):  # interleaved: the machine's load swings hit all three
        for key, fn in steps.items():
            start = time.process_time()
            wall[key].append(seconds(fn, device, 1, warmup=0))
            cpu[key].append(time.process_time() - start)
    ratios = [c / (a + b) for a, b, c in zip(wall["a"], wall["b"], wall["c"])]
    a, b, c = (statistics.median(wall[key]) for key in steps)
    names = {
        "a": "(a) student step (detector losses, backward, SGD)",
        "b": "(b) teacher forward (backbone + box head on RoIs)",
        "c": "(c) KD++ step (student + teacher + kd + nd)      ",
    }
    for key, name in names.items():
        low, high = min(wall[key]), max(wall[key])
        print(
            f"{name} {statistics.median(wall[key]) * 1e3:8.1f} ms wall "
            f"(range {low * 1e3:.0f}-{high * 1e3:.0f}), "
            f"{statistics.median(cpu[key]) * 1e3:8.1f} ms process CPU time"
        )
    ratio = c / (a + b)
    verdict = "met" if ratio <= 1.10 else "not met"
    cpu_a, cpu_b, cpu_c = (statistics.median(cpu[key]) for key in steps)
    print(
        f"(c) / ((a) + (b)) = {ratio:.3f} (goal <= 1.10: {verdict}); "
        f"(c) - (a) - (b) = {(c - a - b) * 1e3:+.1f} ms = {100 * (c - a - b) / (a + b):+.1f}%; "
        f"medians of {args.steps} interleaved calls"
    )
    fastest = min(wall["c"]) / (min(wall["a"]) + min(wall["b"]))
    print(
        f"  per-call ratios {' '.join(f'{r:.3f}' for r in ratios)}: "
        f"median {statistics.median(ratios):.3f}; fastest calls' ratio {fastest:.3f}; "
        f"process CPU time ratio {cpu_c / (cpu_a + cpu_b):.3f}"
    )
    if not all(torch.isfinite(value) for value in last.values()):
        print("warning: a loss was not finite in the last step; the timings may not be typical")


if __name__ == "__main__":
    main()
