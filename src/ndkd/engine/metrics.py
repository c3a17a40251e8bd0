"""Accuracy counting on device and the run folder's ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ndkd.atomic import atomic_write


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, for each k (a device tensor;
    k is capped at the class count)."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top.eq(labels.unsqueeze(1))
    return torch.stack([hits[:, : min(k, k_max)].any(dim=1).sum() for k in ks])


class MetricsLog:
    """``metrics.jsonl``: one JSON object per completed epoch.

    The checkpoint holds the same history, so after a crash :meth:`rewrite` restores the
    file to exactly the epochs the checkpoint covers (no lost or duplicated lines).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(record) + "\n" for record in history)
        atomic_write(self.path, lambda tmp: tmp.write_text(text))


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file."""
    lines = Path(path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
