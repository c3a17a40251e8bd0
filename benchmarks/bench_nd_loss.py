"""nd_loss forward+backward vs a per-sample loop like the public ND code, side by side; and
nd_loss's per-row gradient through plain autograd vs a hand-written fused backward.

The public code keeps the class means as a dict of Python lists (loaded from JSON) and, for
each sample, builds a tensor from its class's list (a host-to-device copy on a GPU), takes
norms, compares them in Python and accumulates the loss. A second loop variant keeps the
means as one tensor, to show how much of the gap is the per-sample Python work alone.
The gradient-path table runs the same ``nd_loss`` call (same inputs) with its per-row step
swapped: plain autograd, or a ``torch.autograd.Function`` with the gradient written out.
Each is timed in blocks of back-to-back calls, the blocks alternating over three rounds;
the table keeps each one's fastest block median.

    python benchmarks/bench_nd_loss.py [--classes 100] [--repeats 20] [--device cpu]
        [--compare both|loops|gradient]

At D=2048 each call allocates several 4 MB buffers; with glibc's default allocator these
may be returned to the OS and page-faulted in again, which can cost more than the arithmetic.
``MALLOC_MMAP_THRESHOLD_=33554432`` (or jemalloc/tcmalloc) avoids that; the header line
records the setting. On a shared VM, repeat the run: figures move by 2x between runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

import ndkd.losses.nd as nd_module
from ndkd import nd_loss

GRADIENT_PATHS = {
    "autograd": nd_module._per_sample_autograd,
    "fused": nd_module._NDPerSample.apply,
}


def loop_public_style(s, t, labels, centers_json, device):
    """One sample at a time, class mean rebuilt from a Python list per sample."""
    total = 0.0
    for s_i, t_i, label in zip(s, t, labels):
        center = torch.tensor(centers_json[str(label.item())], device=device)
        e = center / center.norm(p=2)
        denom = max(s_i.norm(p=2), t_i.norm(p=2))
        total = total + 1 - torch.dot(s_i, e) / denom
    return total / len(labels)


def loop_tensor_centers(s, t, labels, centers):
    """One sample at a time, class means already a device tensor."""
    total = 0.0
    for s_i, t_i, label in zip(s, t, labels):
        e = centers[label] / centers[label].norm(p=2)
        total = total + 1 - torch.dot(s_i, e) / torch.maximum(s_i.norm(), t_i.norm())
    return total / len(labels)


def time_once(step: Callable[[], torch.Tensor], device: torch.device) -> float:
    """Seconds of one forward+backward."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_blocks(
    steps: list[Callable[[], torch.Tensor]], device: torch.device, repeats: int, rounds: int = 3
) -> list[float]:
    """Seconds per call of each step: blocks of ``repeats`` back-to-back calls (after two
    warm-up calls), the steps' blocks alternating for ``rounds`` rounds; per step the
    fastest block median, so a round slowed by other load on a shared machine drops out."""
    best = [float("inf")] * len(steps)
    for _ in range(rounds):
        for index, step in enumerate(steps):
            times = [time_once(step, device) for _ in range(repeats + 2)][2:]
            best[index] = min(best[index], statistics.median(times))
    return best


def make_inputs(
    batch: int, dim: int, classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student (requires grad), teacher, labels and class means of one case."""
    generator = torch.Generator().manual_seed(batch + dim)
    s = torch.randn(batch, dim, generator=generator).to(device).requires_grad_(True)
    t = torch.randn(batch, dim, generator=generator).to(device)
    labels = torch.randint(0, classes, (batch,), generator=generator).to(device)
    centers = (torch.rand(classes, dim, generator=generator) + 0.1).to(device)
    return s, t, labels, centers


def bench_case(
    batch: int, dim: int, classes: int, device: torch.device, repeats: int
) -> list[float]:
    """Seconds per forward+backward: nd_loss, the JSON-list loop, the tensor loop."""
    s, t, labels, centers = make_inputs(batch, dim, classes, device)
    centers_json = {str(k): row for k, row in enumerate(centers.cpu().tolist())}
    steps = [
        lambda: nd_loss(s, t, labels, centers),
        lambda: loop_public_style(s, t, labels, centers_json, device),
        lambda: loop_tensor_centers(s, t, labels, centers),
    ]
    return time_blocks(steps, device, repeats)


def bench_gradient_paths(
    batch: int, dim: int, classes: int, device: torch.device, repeats: int
) -> list[float]:
    """Seconds per nd_loss forward+backward with each of ``GRADIENT_PATHS`` as its per-row
    step (swapped by a plain attribute assignment, so no patching cost is timed)."""
    inputs = make_inputs(batch, dim, classes, device)

    def step(path: str) -> torch.Tensor:
        nd_module._per_sample = GRADIENT_PATHS[path]
        return nd_loss(*inputs)

    original = nd_module._per_sample
    try:
        return time_blocks([lambda p=path: step(p) for path in GRADIENT_PATHS], device, repeats)
    finally:
        nd_module._per_sample = original


def run_gradient_paths(device: torch.device, classes: int, repeats: int) -> None:
    print(f"{'batch':>5} {'dim':>5} {'autograd ms':>12} {'fused ms':>9} {'autograd/fused':>15}")
    for batch in (128, 512):
        for dim in (64, 2048):
            autograd, fused = bench_gradient_paths(batch, dim, classes, device, repeats)
            print(
                f"{batch:>5} {dim:>5} {autograd * 1e3:>12.3f} {fused * 1e3:>9.3f} "
                f"{autograd / fused:>14.2f}x"
            )


def run_loops(device: torch.device, classes: int, repeats: int) -> None:
    print(
        f"{'batch':>5} {'dim':>5} {'nd_loss ms':>11} {'loop(json) ms':>14} "
        f"{'ratio':>8} {'loop(tensor) ms':>16} {'ratio':>7}"
    )
    for batch in (128, 512):
        for dim in (64, 2048):
            fast, slow_json, slow_tensor = bench_case(batch, dim, classes, device, repeats)
            print(
                f"{batch:>5} {dim:>5} {fast * 1e3:>11.3f} {slow_json * 1e3:>14.2f} "
                f"{slow_json / fast:>7.0f}x {slow_tensor * 1e3:>16.2f} "
                f"{slow_tensor / fast:>6.0f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compare", choices=("both", "loops", "gradient"), default="both")
    args = parser.parse_args()
    device = torch.device(args.device)
    allocator = os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default")
    print(
        f"device {device}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
        f"{platform.processor() or platform.machine()}; C={args.classes}; best of 3 block "
        f"medians ({args.repeats} calls); MALLOC_MMAP_THRESHOLD_={allocator}"
    )
    if args.compare in ("both", "loops"):
        run_loops(device, args.classes, args.repeats)
    if args.compare in ("both", "gradient"):
        run_gradient_paths(device, args.classes, args.repeats)


if __name__ == "__main__":
    main()
