"""Typed run configuration: YAML files, dotted ``key=value`` overrides, strict validation.

Every key is declared below with its type and default; an unknown key, a wrong type or an
out-of-range value is an error that names the key. Loss terms are a list of
``{name, weight, ...params}``; their params are checked by the term registry when the
method is built (``ndkd train --dry-run`` does that without training).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


@dataclass
class DataConfig:
    name: Literal["cifar10", "cifar100", "digits", "digit_pairs"] = "cifar100"
    """Dataset: ``cifar10``/``cifar100`` (python-pickle folders), or bundled with
    scikit-learn: ``digits`` (10 classes) or ``digit_pairs`` (100 classes, noisy)."""
    root: str = "data"
    """Folder holding ``cifar-100-python/`` (or its ``.tar.gz``); unused for the bundled ones."""
    num_workers: int = 0
    """Loader worker processes (the in-memory CIFAR loader needs none)."""
    resident: bool = False
    """Keep the whole training set on the training device (GPU fast path)."""


@dataclass
class ModelConfig:
    arch: str = ""
    """Model zoo name (``ndkd.models.list_models()``); empty for no model."""
    checkpoint: str | None = None
    """Weights to load (public ``{"model": state_dict}`` layout or a bare state dict)."""


@dataclass
class CentersConfig:
    path: str | None = None
    """Class-means file (ndkd safetensors or public JSON); ``ndkd centers`` writes it."""
    transform: Literal["train", "test"] = "train"
    """Pass used by ``ndkd centers``: with training augmentation (as the paper) or without."""


@dataclass
class TermConfig:
    """One loss term: its registered name, its single weight, its warm-up, its own params.

    The weight is multiplied by ``min(1, epoch / warmup_epochs)`` (epochs counted from 0, so
    a 20-epoch warm-up trains the first epoch without the term), as the public code does
    for the KD term; ``warmup_epochs: 0`` (default) means full weight from the start.
    """

    name: str = ""
    weight: float = 1.0
    warmup_epochs: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 240
    batch_size: int = 128
    """Total batch over all processes."""
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["multistep", "cosine"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    lr_warmup_epochs: float = 0.0
    """Linear learning-rate warm-up from 0, counted in (fractional) epochs, per step."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    eval_every: int = 1
    """Evaluate on the test split every N epochs (and always after the last)."""


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    output_dir: str = "runs/default"
    """Run folder; ``{seed}`` in it is replaced by the seed (one folder per seed)."""
    data: DataConfig = field(default_factory=DataConfig)
    teacher: ModelConfig = field(default_factory=ModelConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    centers: CentersConfig = field(default_factory=CentersConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    terms: list[TermConfig] = field(default_factory=lambda: [TermConfig("ce", 1.0)])
    """Loss terms, e.g. ``[{name: ce, weight: 1}, {name: kd, weight: 1, temperature: 4}]``."""

    def to_dict(self) -> dict[str, Any]:
        plain = dataclasses.asdict(self)
        plain["terms"] = [_term_to_dict(term) for term in self.terms]
        return plain


def _term_to_dict(term: TermConfig) -> dict[str, Any]:
    plain = {"name": term.name, "weight": term.weight, **term.params}
    if term.warmup_epochs:
        plain["warmup_epochs"] = term.warmup_epochs
    return plain


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> RunConfig:
    """Read a YAML file (or the defaults when ``path`` is None), apply ``key=value``
    overrides (dotted keys; list items by index, e.g. ``terms.1.weight=2``), validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        _apply_override(raw, item)
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from plain data."""
    config = _build(RunConfig, raw, "")
    _validate(config)
    config.output_dir = config.output_dir.replace("{seed}", str(config.seed))
    return config


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (what a run folder's ``config.yaml`` holds)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.05)")
    value = yaml.safe_load(text) if text else ""
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]))
    _assign(node, parts[-1], value, key)


def _child(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        index = _index(part, len(node), where)
        return node[index]
    if part == "terms" and "terms" not in node:
        node["terms"] = [_term_to_dict(term) for term in RunConfig().terms]
    return node.setdefault(part, {})


def _assign(node: Any, part: str, value: Any, where: str) -> None:
    if isinstance(node, list):
        node[_index(part, len(node), where)] = value
    else:
        node[part] = value


def _index(part: str, length: int, where: str) -> int:
    if not part.isdigit() or int(part) >= length:
        raise ConfigError(f"{where}: expected a list index below {length}, found {part!r}")
    return int(part)


def _build(cls: type, raw: Any, where: str) -> Any:
    if cls is TermConfig:
        return _build_term(raw, where)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, found {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {_join(where, unknown[0])!r}; "
            f"known keys here: {', '.join(sorted(known))}"
        )
    values = {name: _coerce(hints[name], raw[name], _join(where, name)) for name in raw}
    return cls(**values)


def _build_term(raw: Any, where: str) -> TermConfig:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"{where}: a loss term is a mapping with a 'name', found {raw!r}")
    params = {k: v for k, v in raw.items() if k not in ("name", "weight", "warmup_epochs")}
    weight = _coerce(float, raw.get("weight", 1.0), f"{where}.weight")
    warmup = _coerce(float, raw.get("warmup_epochs", 0.0), f"{where}.warmup_epochs")
    if warmup < 0:
        raise ConfigError(f"{where}.warmup_epochs: must be non-negative, found {warmup}")
    return TermConfig(raw["name"], weight, warmup, params)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, found {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, found {_kind(value)}")
        return [_coerce(args[0], item, f"{where}.{i}") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {_kind(value)}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return str(value)
    return value


def _validate(config: RunConfig) -> None:
    train = config.train
    positive = {
        "train.epochs": train.epochs,
        "train.batch_size": train.batch_size,
        "train.lr": train.lr,
        "train.eval_every": train.eval_every,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, found {value}")
    for key, value in {
        "train.momentum": train.momentum,
        "train.weight_decay": train.weight_decay,
        "train.lr_warmup_epochs": train.lr_warmup_epochs,
        "data.num_workers": config.data.num_workers,
    }.items():
        if value < 0:
            raise ConfigError(f"{key}: must be non-negative, found {value}")
    if sorted(train.milestones) != train.milestones:
        raise ConfigError(f"train.milestones: must be increasing, found {train.milestones}")
    if not config.student.arch:
        raise ConfigError("student.arch: required (a name from ndkd.models.list_models())")
    if not config.terms:
        raise ConfigError("terms: at least one loss term is required (e.g. {name: ce})")
    names = [term.name for term in config.terms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"terms: each term may appear once, found {duplicates} repeated")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: Any) -> str:
    return type(value).__name__
