"""Packing small runs on a CPU: K tiny digit runs one after another (one slot, all cores)
vs all K at once (K slots, cores shared), both through `ndkd sweep`'s local queue.

Each run is `ndkd train` of a CE-only resnet8 on the bundled digits (batch 256): seconds of
training behind a few seconds of start-up (Python, torch, data, model), which packing
overlaps. The two modes alternate over ``--rounds`` rounds in one invocation; each figure is
the median (a shared machine's other load moves single rounds a lot).

    python benchmarks/bench_sweep_packing.py [--runs 2] [--epochs 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import describe_machine
from ndkd.sweep import choose_slots, plan_sweep, run_queue

CONFIG = """
device: cpu
data: {{name: digits}}
student: {{arch: resnet8}}
train: {{epochs: {epochs}, batch_size: 256, lr: 0.05, milestones: [{epochs}]}}
terms: [{{name: ce, weight: 1.0}}]
"""


def sweep_seconds(config: Path, runs: int, workers: int, output: Path) -> float:
    """Wall seconds of a sweep of ``runs`` seeds of ``config`` on ``workers`` CPU slots."""
    plan = plan_sweep([config], range(runs), [f"output_dir={output}/seed{{seed}}"])
    start = time.perf_counter()
    summary = run_queue(plan.runs, choose_slots(workers=workers))
    seconds = time.perf_counter() - start
    if not summary.all_done:
        failed = ", ".join(f"{e.spec.run_dir} ({e.kind})" for e in summary.unfinished)
        raise SystemExit(f"runs did not finish: {failed}; see their sweep.log")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="K, the runs (default: 2)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default: 3)")
    args = parser.parse_args()
    modes = {"sequential (1 slot)": 1, f"packed ({args.runs} slots)": args.runs}
    seconds: dict[str, list[float]] = {label: [] for label in modes}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "digits.yaml"
        config.write_text(CONFIG.format(epochs=args.epochs))
        for round_ in range(args.rounds):
            for label, workers in modes.items():
                output = Path(tmp) / f"round{round_}-{workers}"
                seconds[label].append(sweep_seconds(config, args.runs, workers, output))
    print(describe_machine())
    print(
        f"{args.runs} digit runs (resnet8, CE, {args.epochs} epochs, batch 256), median of "
        f"{args.rounds} rounds:"
    )
    for label, values in seconds.items():
        rounds = ", ".join(f"{value:.1f}" for value in values)
        print(f"  {label:<22} {statistics.median(values):6.1f} s wall  (rounds: {rounds})")
    sequential, packed = (statistics.median(values) for values in seconds.values())
    print(f"  {'sequential / packed':<22} {sequential / packed:6.2f}x")


if __name__ == "__main__":
    main()
