"""A sweep's plan: every config x seed as one run, each in its own run folder.

Each run is loaded exactly as ``ndkd train -c CONFIG seed=S [overrides] [output_dir=...]``
will load it, so the planned folder is the one the run writes. Nothing is written here.
Config files named ``_*.yaml`` are bases, not recipes (see :mod:`ndkd.config`): a sweep
over ``configs/cifar100/kd/*.yaml`` leaves them out and says so.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ndkd.config import RunConfig, load_config


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: ``ndkd train -c config *overrides``, writing ``run_dir``."""

    config_path: Path
    seed: int
    overrides: tuple[str, ...]
    """Everything after ``-c CONFIG``: ``seed=S``, the sweep's overrides, and with ``--out``
    the rebased ``output_dir``."""
    config: RunConfig
    """The resolved config the run will train with."""

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def log_path(self) -> Path:
        """Where the sweep appends the run's output (not a run file: the run folder's state
        rules ignore it)."""
        return self.run_dir / "sweep.log"


@dataclass(frozen=True)
class SweepPlan:
    """The runs of a sweep and its folder (``--out``, or the run folders' common parent)."""

    runs: tuple[RunSpec, ...]
    root: Path
    bases: tuple[Path, ...] = ()
    """Config files left out because they are bases (``_*.yaml``)."""


def plan_sweep(
    configs: Sequence[str | os.PathLike[str]],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    out: str | os.PathLike[str] | None = None,
) -> SweepPlan:
    """Every config x seed (configs outer, seeds inner), loaded with ``seed=S`` and
    ``overrides``; with ``out``, every run folder is moved under ``out``, keeping its path
    below the run folders' common parent.

    Raises:
        ValueError: no config (bases left out) or seed, a repeated seed, a ``seed=``
            override, a missing or invalid config file (named), or two runs that would share
            a run folder.
    """
    if not configs:
        raise ValueError("no config to sweep: name at least one config file")
    if not seeds:
        raise ValueError("no seed to sweep: give at least one seed (--seeds 0 1 2)")
    repeated = sorted(seed for seed, count in Counter(seeds).items() if count > 1)
    if repeated:
        raise ValueError(f"--seeds repeats {', '.join(map(str, repeated))}; give each seed once")
    if any(item.partition("=")[0].strip() == "seed" for item in overrides):
        raise ValueError("the sweep sets seed=S for each run: give the seeds with --seeds")
    paths = [Path(config) for config in configs]
    for path in paths:
        if not path.is_file():
            raise ValueError(f"config not found: {path}")
    bases = tuple(path for path in paths if path.name.startswith("_"))
    paths = [path for path in paths if not path.name.startswith("_")]
    if not paths:
        raise ValueError("every config named is a base (_*.yaml), not a recipe: nothing to run")
    runs = [_spec(path, seed, (f"seed={seed}", *overrides)) for path in paths for seed in seeds]
    root = _common_parent([spec.run_dir for spec in runs])
    if out is not None:
        runs = [_moved(spec, _absolute(root), Path(out)) for spec in runs]
        root = Path(out)
    _refuse_shared_folders(runs)
    return SweepPlan(tuple(runs), root, bases)


def _spec(path: Path, seed: int, overrides: tuple[str, ...]) -> RunSpec:
    try:
        config = load_config(path, list(overrides))
    except (ValueError, OSError) as error:
        text = str(error)
        raise ValueError(text if text.startswith(str(path)) else f"{path}: {text}") from error
    return RunSpec(path, seed, overrides, config)


def _moved(spec: RunSpec, root: Path, out: Path) -> RunSpec:
    """``spec`` writing to ``out`` / (its folder below ``root``)."""
    target = out / _absolute(spec.run_dir).relative_to(root)
    return _spec(spec.config_path, spec.seed, (*spec.overrides, f"output_dir={target}"))


def _absolute(path: Path) -> Path:
    return Path(os.path.normpath(path.absolute()))


def _common_parent(run_dirs: list[Path]) -> Path:
    """The deepest folder holding every run folder (each run keeps at least its own name);
    relative to the working folder when every run folder is."""
    parent = Path(os.path.commonpath([_absolute(run_dir).parent for run_dir in run_dirs]))
    if any(run_dir.is_absolute() for run_dir in run_dirs):
        return parent
    return Path(os.path.relpath(parent))


def _refuse_shared_folders(runs: list[RunSpec]) -> None:
    seen: dict[Path, RunSpec] = {}
    for spec in runs:
        folder = _absolute(spec.run_dir)
        first = seen.setdefault(folder, spec)
        if first is spec:
            continue
        same_config = _absolute(first.config_path) == _absolute(spec.config_path)
        if same_config and first.seed == spec.seed:
            raise ValueError(f"{spec.config_path} is listed twice; name each config once")
        hint = (
            "put {seed} in its output_dir (e.g. output_dir=runs/NAME/seed{seed}) so that each "
            "seed gets its own folder"
            if same_config
            else "give them different output_dir values"
        )
        raise ValueError(
            f"{first.config_path} (seed {first.seed}) and {spec.config_path} (seed "
            f"{spec.seed}) would both write to {spec.run_dir}: {hint}"
        )
