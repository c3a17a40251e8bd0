"""The ND term's share of a KD training step: resnet56 -> resnet20, batch 64 (goal <= 2%).

Two measurements, side by side in one run:
- the ND term alone (``nd_loss`` forward + backward on the step's shapes: B=64, D=64,
  C=100) divided by a full KD++ step;
- a KD step vs a KD++ step (teacher forward, student forward and backward, SGD), timed in
  alternating blocks; their difference is the ND term's real cost inside the step.

    python benchmarks/bench_nd_share.py [--device cpu] [--steps 10]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import cifar_like, describe_machine, seconds
from ndkd import kd_loss, nd_loss
from ndkd.data import cifar_transform
from ndkd.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(describe_machine())

    torch.manual_seed(0)
    teacher = create_model("resnet56", 100).to(device).eval()
    student = create_model("resnet20", 100).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    images, labels = cifar_like(64)
    images = cifar_transform("cifar100", train=True)(images.to(device))
    labels = labels.to(device)
    centers = torch.rand(100, 64, device=device) + 0.1

    def step(with_nd: bool) -> None:
        with torch.no_grad():
            t = teacher(images)
        s = student(images)
        loss = F.cross_entropy(s.logits, labels) + kd_loss(s.logits, t.logits, 4.0)
        if with_nd:
            loss = loss + 2.0 * nd_loss(s.embedding, t.embedding, labels, centers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    s_emb = torch.randn(64, 64, device=device, requires_grad=True)
    t_emb = torch.randn(64, 64, device=device)
    nd_alone = seconds(lambda: nd_loss(s_emb, t_emb, labels, centers).backward(), device, 200)
    kd_times, kdpp_times = [], []
    for _ in range(args.rounds):
        kd_times.append(seconds(lambda: step(False), device, args.steps, warmup=1))
        kdpp_times.append(seconds(lambda: step(True), device, args.steps, warmup=1))
    kd, kdpp = min(kd_times), min(kdpp_times)
    print(
        f"KD step {kd * 1e3:.1f} ms, KD++ step {kdpp * 1e3:.1f} ms (best of {args.rounds} "
        f"block medians of {args.steps} steps)"
    )
    print(
        f"ND term alone {nd_alone * 1e3:.3f} ms = {100 * nd_alone / kdpp:.2f}% of a KD++ step; "
        f"KD++ - KD = {100 * (kdpp - kd) / kdpp:+.2f}% of the step"
    )


if __name__ == "__main__":
    main()
