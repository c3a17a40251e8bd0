"""`ndkd train`'s loop vs a plain PyTorch KD loop: images/s with the same models and data.

Both train resnet20 from a resnet56 teacher with CE + KD (T=4), SGD momentum 0.9 Nesterov,
batch 64, on the same CIFAR-shaped uint8 images:
- plain: the usual script — a `Dataset` returning PIL images through torchvision's
  RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize, a `DataLoader` with
  worker processes, `.to(device)` per batch, the losses, `optimizer.step()`;
- ndkd: `ndkd.engine.Trainer` with `InMemoryLoader` (batched tensor augmentation), the
  `Distiller` of the `ce` + `kd` terms, channels_last, no per-step host syncs, the
  teacher's BatchNorms folded into its convolutions (as `ndkd train` does).
Steps are timed after warm-up (one step for the plain loop, one epoch of the same length
for ndkd); the two loops alternate.

    python benchmarks/bench_train_throughput.py [--device cpu] [--steps 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from common import cifar_like, describe_machine, synchronize
from ndkd import kd_loss
from ndkd.config import TermConfig, TrainConfig
from ndkd.data import CIFAR100_MEAN, CIFAR100_STD, InMemoryLoader, cifar_transform
from ndkd.data.datasets import ImageTensorDataset
from ndkd.engine import Trainer
from ndkd.methods import BuildContext, Distiller
from ndkd.models import create_model
from ndkd.tasks import ClassificationTask

BATCH = 64


class PilCifar(Dataset):
    """What torchvision's CIFAR dataset does per item: a PIL image through transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC uint8, as the pickle holds
        self.labels = labels.tolist()
        self.transform = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(CIFAR100_MEAN, CIFAR100_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def plain_loop(images, labels, device, steps: int, workers: int) -> float:
    """Images/s of the plain loop over ``steps`` steps (after one warm-up step)."""
    torch.manual_seed(0)
    teacher = create_model("resnet56", 100).to(device).eval()
    student = create_model("resnet20", 100).to(device)
    optimizer = torch.optim.SGD(
        student.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    loader = DataLoader(
        PilCifar(images, labels),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    batches = iter(loader)
    start = None
    for step in range(steps + 1):
        if step == 1:
            synchronize(device)
            start = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            t = teacher(x).logits
        s = student(x).logits
        loss = F.cross_entropy(s, y) + kd_loss(s, t, 4.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the usual per-step logging sync
    synchronize(device)
    return steps * BATCH / (time.perf_counter() - start)


def ndkd_loop(images, labels, device, steps: int) -> float:
    """Images/s of ndkd's Trainer: the second of two epochs of ``steps`` steps (the first is
    the warm-up), as the run's own ``images_per_s`` metric reports it."""
    torch.manual_seed(0)
    teacher = create_model("resnet56", 100).to(device).eval()
    student = create_model("resnet20", 100).to(device)
    count = steps * BATCH
    transform = cifar_transform("cifar100", train=True)
    dataset = ImageTensorDataset(images[:count], labels[:count], 100, transform)
    test = ImageTensorDataset(
        images[:BATCH], labels[:BATCH], 100, cifar_transform("cifar100", train=False)
    )
    with torch.no_grad():
        probe = transform(dataset.images[:2].to(device))
        context = BuildContext(100, student.eval()(probe), teacher(probe))
    terms = [TermConfig("ce", 1.0), TermConfig("kd", 1.0, 0, {"temperature": 4.0})]
    settings = TrainConfig(epochs=2, lr=0.05, channels_last=True, eval_every=2)
    with tempfile.TemporaryDirectory() as run_dir:
        history = Trainer(
            task=ClassificationTask(),
            student=student,
            teacher=teacher,
            method=Distiller(terms, context),
            train_loader=InMemoryLoader(
                dataset, BATCH, shuffle=True, device=device, drop_last=True
            ),
            test_loader=InMemoryLoader(test, BATCH, device=device),
            settings=settings,
            run_dir=run_dir,
            device=device,
            progress_every=0,
        ).fit()
    return history[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(describe_machine())
    images, labels = cifar_like(BATCH * (args.steps + 2) * 2)
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(images, labels, device, args.steps, args.workers))
        ours.append(ndkd_loop(images, labels, device, args.steps))
    p, o = float(np.median(plain)), float(np.median(ours))
    print(
        f"plain PyTorch KD loop ({args.workers} workers): {p:7.1f} img/s  (rounds: "
        f"{', '.join(f'{v:.1f}' for v in plain)})"
    )
    print(
        f"ndkd Trainer:                          {o:7.1f} img/s  (rounds: "
        f"{', '.join(f'{v:.1f}' for v in ours)})"
    )
    print(f"ratio ndkd / plain: {o / p:.2f}x")


if __name__ == "__main__":
    main()
