"""Packing runs on one GPU: aggregate training images/s of K = 1, 2, 4, 8 CIFAR-100 KD++
runs sharing one GPU through `ndkd sweep`'s local queue (`--gpus 0 --per-gpu K`).

Each run is the recipe configs/cifar100/kd++/resnet32x4_resnet8x4.yaml (resnet32x4 teacher,
resnet8x4 student, CE + KD + ND, batch 128) for ``--epochs`` epochs with the GPU fast path
of ``ndkd train --fast`` without compile (data resident on the GPU, channels_last, bf16).
Without ``--data-root`` the data are random CIFAR-100-sized images (the pickle layout,
``--images`` training images + 10,000 test images), and without ``--teacher`` the teacher has
random weights and random class means: the speed is that of real runs, the accuracies mean
nothing. A run's images/s is the median of its epochs after the first (each run logs it per
epoch); the aggregate is their sum over the K runs, which train side by side once started.

    python benchmarks/bench_sweep_gpu.py [--packs 1 2 4 8] [--epochs 3] [--gpu 0]
        [--data-root DIR] [--teacher CKPT --centers FILE]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import describe_machine
from ndkd.analysis.runs import read_run
from ndkd.centers import ClassMeans
from ndkd.models import create_model
from ndkd.sweep import choose_slots, plan_sweep, run_queue

RECIPE = Path(__file__).resolve().parents[1] / "configs/cifar100/kd++/resnet32x4_resnet8x4.yaml"
FAST = ("data.resident=true", "train.channels_last=true", "train.amp=bf16")


def write_cifar100(root: Path, train_images: int, seed: int = 0) -> None:
    """Random images in the CIFAR-100 python-pickle layout."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, count in (("train", train_images), ("test", 10_000)):
        batch = {
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "fine_labels": (np.arange(count) % 100).tolist(),
            "coarse_labels": (np.arange(count) % 20).tolist(),
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=4))


def random_teacher(folder: Path) -> tuple[Path, Path]:
    """A resnet32x4 checkpoint with random weights, and random class means of its size."""
    teacher = create_model("resnet32x4", 100)
    checkpoint = folder / "resnet32x4.pth"
    torch.save({"model": teacher.state_dict()}, checkpoint)
    dim = teacher(torch.zeros(2, 3, 32, 32)).embedding.shape[1]
    centers = ClassMeans(torch.randn(100, dim)).save(folder / "resnet32x4.safetensors")
    return checkpoint, centers


def pack(overrides: list[str], runs: int, gpu: str, output: Path) -> tuple[float, list[float]]:
    """Wall seconds of ``runs`` seeds of the recipe on one GPU at once, and each run's
    steady images/s."""
    plan = plan_sweep([RECIPE], range(runs), [*overrides, f"output_dir={output}/seed{{seed}}"])
    start = time.perf_counter()
    summary = run_queue(plan.runs, choose_slots(gpus=[gpu], per_gpu=runs))
    wall = time.perf_counter() - start
    if not summary.all_done:
        failed = ", ".join(f"{e.spec.run_dir} ({e.kind})" for e in summary.unfinished)
        raise SystemExit(f"runs did not finish: {failed}; see their sweep.log")
    speeds = []
    for spec in plan.runs:
        history = read_run(spec.run_dir).history
        steady = history[1:] or history
        speeds.append(statistics.median(record["images_per_s"] for record in steady))
    return wall, speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4, 8], metavar="K")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    parser.add_argument("--gpu", default="0", help="the GPU (CUDA_VISIBLE_DEVICES value)")
    parser.add_argument("--images", type=int, default=50_000, help="random training images")
    parser.add_argument("--data-root", help="a real cifar-100-python folder's parent")
    parser.add_argument("--teacher", help="a resnet32x4 checkpoint (default: random weights)")
    parser.add_argument("--centers", help="its class means (with --teacher)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit(
            "bench_sweep_gpu.py measures runs sharing a CUDA GPU, and none is visible here; "
            "benchmarks/bench_sweep_packing.py measures packing on a CPU"
        )
    if bool(args.teacher) != bool(args.centers):
        raise SystemExit("--teacher and --centers go together")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data_root
        if data is None:
            data = root / "data"
            write_cifar100(data, args.images)
        teacher, centers = (args.teacher, args.centers) if args.teacher else random_teacher(root)
        overrides = [
            *FAST,
            "device=cuda",
            f"data.root={data}",
            f"teacher.checkpoint={teacher}",
            f"centers.path={centers}",
            f"train.epochs={args.epochs}",
        ]
        rows = [(k, *pack(overrides, k, args.gpu, root / f"pack{k}")) for k in args.packs]
    print(describe_machine())
    print(f"KD++ resnet32x4 -> resnet8x4, batch 128, bf16, {args.epochs} epochs per run:")
    first_k, _, first_speeds = rows[0]
    one_run = sum(first_speeds) / first_k  # per run, in the first pack
    print(
        f"  {'K':>2}  {'wall s':>7}  {'img/s per run':>13}  {'aggregate img/s':>15}  "
        f"aggregate / one run of K={first_k}"
    )
    for k, wall, speeds in rows:
        total = sum(speeds)
        print(
            f"  {k:>2}  {wall:7.1f}  {statistics.median(speeds):13.0f}  {total:15.0f}  "
            f"{total / one_run:5.2f}x"
        )


if __name__ == "__main__":
    main()
