"""Grouping runs by recipe: the runs of one recipe differ only in their seed.

Two runs share a recipe when their resolved configs are equal after removing
:data:`IGNORED_KEYS`: the seed, the output-only keys (where and what the run writes:
:data:`ndkd.config.OUTPUT_ONLY_KEYS`) and the speed-only keys (where or how fast a run
executes but not what it computes: :data:`ndkd.config.SPEED_ONLY_KEYS`, e.g. device, data
location, loader workers, the ``--fast`` switches).
Everything else tells recipes apart, including ``train.amp`` (it changes the arithmetic),
checkpoint and class-means paths, and ``train.eval_every`` (it decides the best epoch).

Within a recipe, runs are grouped again by the number of epochs they completed, so a run
that stopped early is never averaged with finished ones: it gets a row of its own, marked
incomplete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from ndkd.analysis.runs import Run
from ndkd.config import OUTPUT_ONLY_KEYS, SPEED_ONLY_KEYS, RunConfig

log = logging.getLogger(__name__)

IGNORED_KEYS = ("seed", *OUTPUT_ONLY_KEYS, *SPEED_ONLY_KEYS)


@dataclass(frozen=True)
class RunGroup:
    """Runs of one recipe that completed the same number of epochs, ordered by seed."""

    label: str
    recipe_id: str
    runs: tuple[Run, ...]

    @property
    def config(self) -> RunConfig:
        return self.runs[0].config

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def epochs_completed(self) -> int:
        return self.runs[0].epochs_completed

    @property
    def epochs_planned(self) -> int:
        return self.runs[0].epochs_planned

    @property
    def complete(self) -> bool:
        return self.runs[0].complete


def recipe_key(config: RunConfig) -> dict[str, Any]:
    """The resolved config without :data:`IGNORED_KEYS`."""
    key = config.to_dict()
    for dotted in IGNORED_KEYS:
        *parents, leaf = dotted.split(".")
        node = key
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    return key


def recipe_id(config: RunConfig) -> str:
    """A short stable hash of :func:`recipe_key` (8 hex digits)."""
    text = json.dumps(recipe_key(config), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def seedless_dir(output_dir: str, seed: int) -> str:
    """``output_dir`` without its seed: a last component ``seed3`` is dropped, a suffix such
    as ``_seed3`` is cut (``runs/kd/seed3`` -> ``runs/kd``, ``runs/kd_seed3`` -> ``runs/kd``);
    any other ``output_dir`` is returned unchanged."""
    path = PurePath(output_dir)
    name = re.sub(rf"[-_.]?seed[-_=]?{seed}$", "", path.name)
    if name == path.name:
        return output_dir
    return str(path.parent) if not name else str(path.parent / name)


def group_runs(runs: Sequence[Run]) -> list[RunGroup]:
    """Groups by recipe and epochs completed, sorted by label, finished rows first.

    A recipe's label is its runs' common :func:`seedless_dir`; when they disagree it is
    ``recipe <id>``, and when two recipes would share a label the id is appended.
    """
    by_recipe: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_recipe[recipe_id(run.config)].append(run)
    labels = {rid: _label(rid, members) for rid, members in by_recipe.items()}
    taken = defaultdict(int)
    for label in labels.values():
        taken[label] += 1
    labels = {
        rid: f"{label} [{rid}]" if taken[label] > 1 else label for rid, label in labels.items()
    }
    groups = []
    for rid, members in by_recipe.items():
        by_epochs: dict[int, list[Run]] = defaultdict(list)
        for run in members:
            by_epochs[run.epochs_completed].append(run)
        for same in by_epochs.values():
            ordered = tuple(sorted(same, key=lambda r: (r.seed, str(r.path))))
            seeds = [run.seed for run in ordered]
            if len(set(seeds)) < len(seeds):
                log.warning(
                    "recipe %s has several runs with the same seed (%s): %s",
                    labels[rid],
                    seeds,
                    ", ".join(str(run.path) for run in ordered),
                )
            groups.append(RunGroup(labels[rid], rid, ordered))
    return sorted(groups, key=lambda g: (g.label, not g.complete, -g.epochs_completed))


def _label(rid: str, runs: list[Run]) -> str:
    dirs = {seedless_dir(run.config.output_dir, run.seed) for run in runs}
    return dirs.pop() if len(dirs) == 1 else f"recipe {rid}"
