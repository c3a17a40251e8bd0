"""PNG figures: embedding norm/cosine histograms, 2-D embedding views, learning curves.

Drawn with matplotlib's object API (``Figure`` + the Agg canvas): no display and no global
pyplot state, so it works on a headless server and from several threads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

DPI = 120
BINS = 40


@dataclass
class Curve:
    """A metric over epochs: the mean over seeds and its std (zeros for one seed)."""

    epochs: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def pca_2d(features: torch.Tensor) -> torch.Tensor:
    """``[N, D]`` -> ``[N, 2]``: coordinates on the two leading principal components."""
    centered = features.double() - features.double().mean(dim=0)
    _, _, basis = torch.linalg.svd(centered, full_matrices=False)
    return (centered @ basis[:2].T).float()


def plot_feature_histograms(
    norms: Mapping[str, torch.Tensor],
    cosines: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    reference: str | None = None,
) -> Path:
    """Two panels: histograms of embedding L2 norms and of cosines to the teacher class
    mean of the label, one outline per model; ``reference`` (the teacher) is drawn dashed."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = figure.subplots(1, 2)
    _histograms(left, norms, reference)
    left.set(xlabel="embedding L2 norm", ylabel="density", title="Feature norm (test set)")
    _histograms(right, cosines, reference)
    right.set(
        xlabel="cosine to the teacher class mean of the label",
        ylabel="density",
        title="Feature direction (test set)",
    )
    return _save(figure, path)


def _histograms(axes, values: Mapping[str, torch.Tensor], reference: str | None) -> None:
    if not values:
        axes.text(0.5, 0.5, "not available", ha="center", va="center", transform=axes.transAxes)
        return
    pooled = torch.cat([v.flatten() for v in values.values()]).numpy()
    bins = np.linspace(pooled.min(), pooled.max(), BINS + 1)
    for label, data in values.items():
        is_reference = label == reference
        axes.hist(
            data.numpy(),
            bins=bins,
            density=True,
            histtype="step",
            linewidth=2.0 if is_reference else 1.6,
            linestyle="--" if is_reference else "-",
            color="black" if is_reference else None,
            label=f"{label} (mean {data.mean():.2f})",
        )
    axes.legend(fontsize="small")


def plot_embeddings_2d(
    panels: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    path: str | os.PathLike[str],
    classes: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> Path:
    """One panel per model: its embeddings of the samples of ``classes`` on their own two
    leading principal components, colored by class."""
    figure = Figure(figsize=(3.6 * len(panels) + 1.4, 3.9), layout="constrained")
    axes_row = np.atleast_1d(figure.subplots(1, len(panels)))
    wanted = torch.as_tensor(list(classes))
    colors = [f"C{i % 10}" for i in range(len(wanted))]
    names = list(class_names) if class_names is not None else [str(c) for c in classes]
    for axes, (label, (features, labels)) in zip(axes_row, panels.items()):
        keep = torch.isin(labels, wanted)
        points = pca_2d(features[keep]).numpy()
        kept = labels[keep]
        for index, cls in enumerate(wanted.tolist()):
            member = (kept == cls).numpy()
            axes.scatter(*points[member].T, s=7, alpha=0.7, color=colors[index], label=names[index])
        axes.set(title=label, xticks=[], yticks=[])
    axes_row[-1].legend(
        title="class", fontsize="small", markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5)
    )
    figure.suptitle("Test embeddings, 2-D PCA per model")
    return _save(figure, path)


def plot_learning_curves(
    panels: Sequence[tuple[str, str, Mapping[str, Curve]]], path: str | os.PathLike[str]
) -> Path:
    """One panel per ``(title, ylabel, {label: curve})``: mean over seeds, ± std shaded."""
    figure = Figure(figsize=(5.2 * len(panels), 4.0), layout="constrained")
    axes_row = np.atleast_1d(figure.subplots(1, len(panels)))
    for axes, (title, ylabel, curves) in zip(axes_row, panels):
        for index, (label, curve) in enumerate(curves.items()):
            color = f"C{index % 10}"
            axes.plot(curve.epochs, curve.mean, color=color, label=label, marker=".")
            axes.fill_between(
                curve.epochs, curve.mean - curve.std, curve.mean + curve.std, color=color, alpha=0.2
            )
        axes.set(title=title, xlabel="epoch", ylabel=ylabel)
        if not curves:
            axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes)
    handles, labels = axes_row[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4))
    return _save(figure, path)


def _save(figure: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
