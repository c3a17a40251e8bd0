"""Multi-label evaluation: ndkd's vectorized per-class AP vs scikit-learn's, class by class.

On a COCO-2014-val-sized score matrix (40,137 images x 80 classes, ~3% positives), the
plain AP of every class by ``ndkd.tasks.ranking.average_precision`` (one sort of the whole
matrix, tied scores grouped) vs a loop of ``sklearn.metrics.average_precision_score`` over
the classes (what an evaluation script usually does). Both must agree to 1e-9; the printed
ratio is sklearn time / ndkd time, measured side by side. ndkd's version exists because the
VOC interpolated and 11-point definitions are not in scikit-learn, scikit-learn is not a
core dependency, and it runs where the scores are; the goal is only to cost no more than
the usual loop (ratio >= 0.8 on a CPU; the sort of the matrix dominates both).

    python benchmarks/bench_ranking_metrics.py [--images 40137] [--classes 80]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from common import describe_machine, seconds
from ndkd.tasks.ranking import average_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40137)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    positives = torch.rand(args.images, args.classes, generator=generator) < 0.03
    scores = torch.sigmoid(
        torch.randn(args.images, args.classes, generator=generator) + 2 * positives
    )
    scores = scores.float()
    target, score = positives.numpy(), scores.numpy()

    def ours() -> torch.Tensor:
        return average_precision(scores, positives, definition="plain")

    def sklearn() -> np.ndarray:
        return np.array(
            [average_precision_score(target[:, c], score[:, c]) for c in range(args.classes)]
        )

    difference = float(np.abs(ours().numpy() - sklearn()).max())
    if difference > 1e-9:
        raise SystemExit(f"ndkd and scikit-learn disagree by {difference}")
    cpu = torch.device("cpu")
    t_ours = seconds(ours, cpu, args.repeats)
    t_sklearn = seconds(sklearn, cpu, args.repeats)
    print(describe_machine())
    print(f"{args.images} images x {args.classes} classes; max |difference| {difference:.1e}")
    print(f"ndkd average_precision   {1000 * t_ours:8.1f} ms")
    print(f"sklearn, class by class  {1000 * t_sklearn:8.1f} ms")
    print(f"ratio sklearn / ndkd     {t_sklearn / t_ours:8.2f}x")


if __name__ == "__main__":
    main()
