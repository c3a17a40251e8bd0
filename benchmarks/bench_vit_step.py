"""A ViT-S student's KD++ training step with and without each memory/speed option: bf16
autocast (losses stay fp32), activation (gradient) checkpointing
(``student.grad_checkpointing``), ``torch.compile`` of the student step. Each option runs
in a fresh process (peak memory is per process), all of them in one invocation, so the
figures compare side by side.

Student ``timm:vit_small_patch16_224`` at ``--size`` pixels (CPU: small images), teacher
``torchvision:resnet18``, terms CE + KD + ND (random class means), SGD; the rate is the
second of two epochs of ``--steps`` steps, as the run's own ``images_per_s`` reports it.

    python benchmarks/bench_vit_step.py --size 64 --batch 32 --steps 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

OPTIONS = {
    "fp32": {},
    "bf16 autocast": {"amp": "bf16"},
    "gradient checkpointing": {"grad_checkpointing": True},
    "torch.compile": {"compile": True},
}


def one_run(size: int, batch: int, steps: int, option: dict, device: str) -> dict:
    import torch

    from ndkd.centers import ClassMeans
    from ndkd.config import TermConfig, TrainConfig
    from ndkd.data import ImageTensorDataset, InMemoryLoader
    from ndkd.engine import Trainer
    from ndkd.engine.epoch_totals import peak_memory_mb
    from ndkd.methods import BuildContext, Distiller
    from ndkd.models import create_model
    from ndkd.tasks import ClassificationTask

    torch.manual_seed(0)
    target = torch.device(device)
    student = create_model("timm:vit_small_patch16_224", 100, img_size=size)
    student.set_grad_checkpointing(option.get("grad_checkpointing", False))
    student = student.to(target)
    teacher = create_model("torchvision:resnet18", 100).eval().to(target)
    images = torch.randn(batch * steps, 3, size, size)
    labels = torch.arange(batch * steps) % 100
    data = ImageTensorDataset(images, labels, 100)
    with torch.no_grad():
        context = BuildContext(
            100,
            student.eval()(images[:2].to(target)),
            teacher(images[:2].to(target)),
            ClassMeans(torch.rand(100, 512) + 0.1),
        )
    terms = [
        TermConfig("ce", 1.0),
        TermConfig("kd", 1.0, 0, {"temperature": 1.0}),
        TermConfig("nd", 1.0),
    ]
    settings = TrainConfig(
        epochs=2,
        lr=0.01,
        eval_every=2,
        amp=option.get("amp", "none"),
        compile=option.get("compile", False),
        milestones=[],
    )
    with tempfile.TemporaryDirectory() as run_dir:
        history = Trainer(
            task=ClassificationTask(),
            student=student,
            teacher=teacher,
            method=Distiller(terms, context).to(target),
            train_loader=InMemoryLoader(data, batch, shuffle=True, drop_last=True, device=target),
            test_loader=InMemoryLoader(
                ImageTensorDataset(images[:batch], labels[:batch], 100), batch
            ),
            settings=settings,
            run_dir=run_dir,
            device=target,
            progress_every=0,
        ).fit()
    return {"images_per_s": history[-1]["images_per_s"], "peak_mb": peak_memory_mb(target)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        figures = one_run(args.size, args.batch, args.steps, OPTIONS[args.only], args.device)
        print(json.dumps(figures))
        return
    print(
        f"ViT-S/16 student at {args.size}px, batch {args.batch}, resnet18 teacher, CE+KD+ND, "
        f"{args.device}"
    )
    base = None
    for name in OPTIONS:
        command = [
            sys.executable,
            __file__,
            "--size",
            str(args.size),
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--only",
            name,
            "--device",
            args.device,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"  {name:<24} failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        base = base or figures
        print(
            f"  {name:<24} {figures['images_per_s']:7.1f} img/s "
            f"({figures['images_per_s'] / base['images_per_s']:.2f}x)  peak memory "
            f"{figures['peak_mb']:7.0f} MB ({figures['peak_mb'] / base['peak_mb']:.2f}x)"
        )


if __name__ == "__main__":
    main()
