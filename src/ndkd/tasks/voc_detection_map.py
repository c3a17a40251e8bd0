"""PASCAL VOC 2007 detection AP: per class, the 11-point interpolated average precision at
IoU 0.5, as the VOC 2007 devkit computes it.

Per class, the detections in decreasing score order (ties keep their order) each take the
ground-truth box of their class and image with the highest IoU. At IoU >= 0.5 with a
"difficult" box (an annotation flagged ``difficult``, ``ignore`` or ``iscrowd``) the
detection is ignored (neither true nor false positive); with another box it is a true
positive when no earlier detection took that box, else a false positive; below 0.5 (or in an
image without a box of the class) it is a false positive. Recall is over the class's
non-difficult boxes; AP averages, at recall 0, 0.1, ..., 1, the best precision reached at that
recall or beyond (0 if never reached). IoU is computed on continuous coordinates (boxes
``x, y, w, h`` in pixels, no +1 of the devkit's pixel-index boxes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchvision.ops import box_iou

IOU_THRESHOLD = 0.5
_IGNORE_FLAGS = ("difficult", "ignore", "iscrowd")


def eleven_point_ap(recall: torch.Tensor, precision: torch.Tensor) -> float:
    """The mean over recall thresholds ``0, 0.1, ..., 1`` (as ``np.arange(0, 1.1, 0.1)``) of
    the largest precision whose recall reaches the threshold (0 where none does)."""
    thresholds = torch.arange(11, dtype=torch.float64) * 0.1
    reached = recall.double()[None, :] >= thresholds[:, None]
    best = torch.where(reached, precision.double()[None, :], 0.0)
    return float(best.amax(dim=1).mean()) if recall.numel() else 0.0


def voc07_average_precisions(
    detections: torch.Tensor,
    ground_truth: Mapping[str, Any],
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[int, float]:
    """AP of each category of ``ground_truth`` (module documentation), by category id; NaN
    for a category without a non-difficult box.

    Args:
        detections: ``[N, 7]`` rows ``(image_id, x, y, w, h, score, category_id)``.
        ground_truth: COCO-format ``images``, ``annotations`` (``image_id``,
            ``category_id``, ``bbox`` as x, y, w, h; optional difficult flags) and
            ``categories``.
    """
    truth = _Truth(ground_truth)
    rows = detections.detach().double().cpu()
    rows = rows[torch.argsort(rows[:, 5], descending=True, stable=True)]
    categories = rows[:, 6].long()
    best, overlap = truth.best_matches(rows[:, 0].long(), _corners(rows[:, 1:5]), categories)
    taken = overlap >= iou_threshold
    ignored = taken.clone()
    ignored[taken] = truth.ignored[best[taken]]
    claims = taken & ~ignored
    position = torch.arange(len(rows))
    first = torch.full((len(truth.ignored),), len(rows), dtype=torch.long)
    first.scatter_reduce_(0, best[claims], position[claims], "amin")
    true = claims.clone()
    true[claims] = first[best[claims]] == position[claims]
    counted = ~ignored
    result = {}
    for category in truth.category_ids:
        positives = int(((truth.categories == category) & ~truth.ignored).sum())
        if positives == 0:
            result[category] = float("nan")
            continue
        mine = (categories == category) & counted
        hits = true[mine].double().cumsum(0)
        seen = torch.arange(1, int(mine.sum()) + 1, dtype=torch.float64)
        result[category] = eleven_point_ap(hits / positives, hits / seen)
    return result


class _Truth:
    """The ground-truth boxes (corners, float64), their categories, images and difficult
    flags, grouped by image."""

    def __init__(self, ground_truth: Mapping[str, Any]) -> None:
        annotations = ground_truth["annotations"]
        self.category_ids = [int(category["id"]) for category in ground_truth["categories"]]
        bboxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float64)
        self.boxes = _corners(bboxes.reshape(-1, 4))
        self.categories = torch.tensor([a["category_id"] for a in annotations], dtype=torch.long)
        self.ignored = torch.tensor(
            [any(a.get(flag) for flag in _IGNORE_FLAGS) for a in annotations], dtype=torch.bool
        )
        images = torch.tensor([a["image_id"] for a in annotations], dtype=torch.long)
        order = torch.argsort(images, stable=True)
        ids, counts = torch.unique_consecutive(images[order], return_counts=True)
        self.by_image = dict(zip(ids.tolist(), order.split(counts.tolist())))

    def best_matches(
        self, images: torch.Tensor, boxes: torch.Tensor, categories: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For each detection, the index of the box of its category and image with the
        highest IoU (-1 if none) and that IoU (-1 if none)."""
        best = torch.full((len(images),), -1, dtype=torch.long)
        overlap = torch.full((len(images),), -1.0, dtype=torch.float64)
        order = torch.argsort(images, stable=True)
        ids, counts = torch.unique_consecutive(images[order], return_counts=True)
        for image, members in zip(ids.tolist(), order.split(counts.tolist())):
            candidates = self.by_image.get(image)
            if candidates is None:
                continue
            iou = box_iou(boxes[members], self.boxes[candidates])
            same = categories[members, None] == self.categories[None, candidates]
            values, columns = torch.where(same, iou, -1.0).max(dim=1)
            overlap[members] = values
            best[members] = torch.where(values >= 0, candidates[columns], -1)
        return best, overlap


def _corners(xywh: torch.Tensor) -> torch.Tensor:
    return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
