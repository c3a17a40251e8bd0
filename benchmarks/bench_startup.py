"""Start-up time of the ``ndkd`` command: ``ndkd --help``, and how long ``ndkd train`` takes
from a bare ``import torch`` to the end of its first training step.

Each figure is the median over ``--rounds`` fresh processes, measured side by side in one run
with the cost of starting Python and of importing torch, so the ratios hold on a noisy
machine. The training run reads a full-size CIFAR-100 folder (50,000 + 10,000 random images in
the standard pickle layout, written to a temporary folder) and trains a KD resnet20 ->
resnet8 step with batch 64, as ``ndkd train`` does (config loading, data, models, method,
then the step); the progress callback marks the end of step 1. Beside it, the same first
step of a plain PyTorch loop (read the pickle, build both models and SGD, one KD step): its
time is what torch itself costs at start (first-call kernel set-up, the optimizer's import
of ``torch._dynamo``), so the difference is ndkd's own start-up cost.

    python benchmarks/bench_startup.py --rounds 5
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

FIRST_STEP = textwrap.dedent(
    """
    import sys, time
    start = time.perf_counter()
    import torch
    torch_done = time.perf_counter()
    from ndkd import experiment
    from ndkd.config import load_config

    class FirstStep(Exception):
        pass

    def stop(event):
        if event.phase == "train" and event.done >= 1:
            raise FirstStep

    config = load_config(sys.argv[1], [f"output_dir={sys.argv[2]}", "log.progress_every=1"])
    try:
        experiment.train(config, progress=stop)
    except FirstStep:
        pass
    end = time.perf_counter()
    print(torch_done - start, end - torch_done)
    """
)


PLAIN_FIRST_STEP = textwrap.dedent(
    """
    import pickle, sys, time
    start = time.perf_counter()
    import torch
    torch_done = time.perf_counter()
    import torch.nn.functional as F
    from ndkd.models import create_model

    with open(sys.argv[1] + "/cifar-100-python/train", "rb") as handle:
        batch = pickle.load(handle)
    images = torch.from_numpy(batch["data"]).view(-1, 3, 32, 32)
    labels = torch.tensor(batch["fine_labels"])
    teacher = create_model("resnet20", 100).eval()
    student = create_model("resnet8", 100)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x, y = images[:64].float().div(255), labels[:64]
    with torch.no_grad():
        t = teacher(x).logits
    s = student(x).logits
    kd = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(t / 4, 1), reduction="batchmean") * 16
    loss = F.cross_entropy(s, y) + kd
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    end = time.perf_counter()
    print(torch_done - start, end - torch_done)
    """
)


def write_cifar100(root: Path, seed: int = 0) -> None:
    """Random images in the CIFAR-100 python-pickle layout (full standard size)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, count in (("train", 50_000), ("test", 10_000)):
        batch = {
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "fine_labels": (np.arange(count) % 100).tolist(),
            "coarse_labels": (np.arange(count) % 20).tolist(),
        }
        (folder / split).write_bytes(pickle.dumps(batch, protocol=4))


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    ndkd = [python, "-m", "ndkd"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar100(root / "data")
        config = root / "kd.yaml"
        config.write_text(
            textwrap.dedent(
                f"""
                device: cpu
                data: {{name: cifar100, root: {root / "data"}}}
                teacher: {{arch: resnet20}}
                student: {{arch: resnet8}}
                train: {{epochs: 1, batch_size: 64}}
                terms: [{{name: ce}}, {{name: kd, temperature: 4}}]
                """
            )
        )
        rows: dict[str, list[float]] = {"python": [], "import torch": [], "ndkd --help": []}
        torch_in_train, first_step, plain_step = [], [], []
        for round_ in range(args.rounds):
            rows["python"].append(wall([python, "-c", "pass"]))
            rows["import torch"].append(wall([python, "-c", "import torch"]))
            rows["ndkd --help"].append(wall([*ndkd, "--help"]))
            out = subprocess.run(
                [python, "-c", FIRST_STEP, str(config), str(root / f"run{round_}")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            torch_in_train.append(float(out[0]))
            first_step.append(float(out[1]))
            plain = subprocess.run(
                [python, "-c", PLAIN_FIRST_STEP, str(root / "data")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            plain_step.append(float(plain[1]))
    print(f"median of {args.rounds} fresh processes each:")
    for name, values in rows.items():
        print(f"  {name:<34} {statistics.median(values):6.3f} s (wall, process start to exit)")
    print(f"  {'import torch inside the train run':<34} {statistics.median(torch_in_train):6.3f} s")
    for name, values in (
        ("ndkd train: torch -> first step", first_step),
        ("plain loop: torch -> first step", plain_step),
    ):
        print(
            f"  {name:<34} {statistics.median(values):6.3f} s "
            f"(rounds: {', '.join(f'{v:.2f}' for v in values)})"
        )
    extra = statistics.median(first_step) - statistics.median(plain_step)
    print(f"ndkd's own start-up cost over the plain loop: {extra:.3f} s")


if __name__ == "__main__":
    main()
