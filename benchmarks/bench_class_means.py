"""class_means vs the public code's per-scalar accumulation, and vs bare teacher inference.

1. Accumulation alone: the same precomputed embeddings are averaged per class by
   ``ndkd.class_means`` (fed through a model that returns its input as the embedding) and by
   a loop like the public code's (one ``.item()``, round and list append per scalar, then a
   NumPy mean per class and dimension). Goal: >= 50x.
2. A real teacher pass: ``class_means(resnet56, loader)`` vs the same loader through the
   bare teacher under ``inference_mode``. Goal: >= 90% of the bare throughput.

    python benchmarks/bench_class_means.py [--device cpu]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from common import cifar_like, describe_machine, seconds
from ndkd import ModelOutput, class_means
from ndkd.data import InMemoryLoader, cifar_transform
from ndkd.data.datasets import ImageTensorDataset
from ndkd.models import create_model


class GivenEmbeddings(nn.Module):
    """A 'model' whose embedding is its input: isolates the accumulation of class_means."""

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(logits=x[:, :1], embedding=x)


def public_style_means(features: torch.Tensor, labels: torch.Tensor) -> dict[str, list[float]]:
    """Per sample, per dimension: item(), round, append; then a NumPy mean per list."""
    lists: dict[str, list[list[float]]] = {}
    for embedding, label in zip(features, labels):
        key = str(label.item())
        if key not in lists:
            lists[key] = [[] for _ in range(len(embedding))]
        for j in range(len(embedding)):
            lists[key][j].append(round(embedding[j].item(), 4))
    return {k: [round(float(np.array(v).mean()), 4) for v in rows] for k, rows in lists.items()}


def accumulation(device: torch.device, n: int, dim: int, classes: int = 100) -> None:
    generator = torch.Generator().manual_seed(dim)
    features = torch.rand(n, dim, generator=generator)
    labels = torch.arange(n) % classes
    batches = [(features[i : i + 256], labels[i : i + 256]) for i in range(0, n, 256)]
    model = GivenEmbeddings()
    fast = seconds(lambda: class_means(model, batches, classes, device), device, repeats=5)
    slow = seconds(lambda: public_style_means(features, labels), device, repeats=1, warmup=0)
    print(
        f"accumulation  N={n:>6} D={dim:>5}: class_means {fast * 1e3:8.2f} ms, "
        f"per-scalar loop {slow * 1e3:9.1f} ms, ratio {slow / fast:6.0f}x"
    )


def teacher_pass(device: torch.device, n: int, batch: int) -> None:
    images, labels = cifar_like(n)
    dataset = ImageTensorDataset(images, labels, 100, cifar_transform("cifar100", train=True))
    loader = InMemoryLoader(dataset, batch, device=device)
    teacher = create_model("resnet56", 100).to(device).eval()

    def bare() -> None:
        with torch.inference_mode():
            for x, _ in loader:
                teacher(x)

    bare_s = seconds(bare, device, repeats=3, warmup=1)
    means_s = seconds(
        lambda: class_means(teacher, loader, 100, device), device, repeats=3, warmup=1
    )
    print(
        f"teacher pass  resnet56, {n} images, batch {batch}: bare {n / bare_s:7.0f} img/s, "
        f"class_means {n / means_s:7.0f} img/s = {100 * bare_s / means_s:5.1f}% of bare"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2048)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(describe_machine())
    accumulation(device, n=10_000, dim=64)
    accumulation(device, n=2_000, dim=2048)
    teacher_pass(device, n=args.images, batch=256)


if __name__ == "__main__":
    main()
