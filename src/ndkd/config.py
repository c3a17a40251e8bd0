"""Typed run configuration: YAML files, inherited bases, dotted ``key=value`` overrides,
strict validation.

Every key is declared below with its type and default; an unknown key, a wrong type or an
out-of-range value is an error that names the key. Loss terms are a list of
``{name, weight, ...params}``; their params are checked by the term registry when the
method is built (``ndkd train --dry-run`` does that without training).

A config file may name bases under a top-level ``base:`` key: one path or a list of paths,
relative to the file that names them (bases may name bases of their own). The result is
the bases merged in order (a later one wins), then the file itself, then the command-line
overrides. Mappings merge key by key, at any depth; a list or a scalar is replaced whole,
so a file that names ``terms`` states the full list. Files whose name starts with ``_``
are bases by convention, not recipes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ndkd.data.catalog import dataset_names, task_of


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


BASE_KEY = "base"
"""The top-level key of a config file that names the files it inherits from."""

SPEED_ONLY_KEYS: tuple[str, ...] = (
    "device",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
    "data.root",
    "data.num_workers",
    "data.resident",
    "train.channels_last",
    "train.compile",
    "log.progress_every",
)
"""Dotted keys that change where or how fast a run executes, never what it computes
(the same data, augmentation, schedule and losses)."""

OUTPUT_ONLY_KEYS: tuple[str, ...] = ("output_dir", "recipe", "log.tensorboard")
"""Dotted keys that change only where, in which form or under which name a run's results
are written."""

CONFIGS_FOLDER = "configs"
"""A config file below a folder of this name gets the path below it as its ``recipe``."""

SEED_MAX = 2**32 - 1
"""Largest accepted ``seed`` (numpy's and torch's seeding accept ``[0, 2**32 - 1]``)."""

DEVICE_FORMS = "auto, cpu, mps, cuda or cuda:N (N a GPU index)"
"""The accepted forms of ``device`` (whether that device exists is checked when a run
starts, not here)."""
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

TERM_KEYS = ("name", "weight", "warmup_epochs", "warmup_from")
"""Keys of a loss term read by the composition; every other key is a param of the term."""

STRONG_VIEWS = ("mlkd",)
"""The accepted non-empty values of ``data.strong_view``."""

WARMUP_FROM = (0, 1)
"""The values of a term's ``warmup_from``: the number of the first epoch in its warm-up."""

POSITIVE_TERM_PARAMS = ("temperature", "tau")
"""Term params that, when given, must be finite positive numbers."""

NON_NEGATIVE_TERM_PARAMS = ("alpha", "beta")
"""Term params that, when given, must be finite non-negative numbers (a weight inside a
term, e.g. DKD's ``alpha``/``beta``: 0 switches that part off)."""

# YAML 1.1 (PyYAML) reads "5e-4" (no dot) and "nan"/"inf" (no leading dot) as strings.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")
_NON_FINITE_WORD = re.compile(r"[-+]?\.?(nan|inf|infinity)", re.IGNORECASE)


@dataclass
class DataConfig:
    name: str = "cifar100"
    """Dataset, a name of ``ndkd.data.catalog.dataset_names()``: ``cifar10``/``cifar100``
    (python-pickle folders), or bundled with scikit-learn: ``digits`` (10 classes) or
    ``digit_pairs`` (100 classes, noisy)."""
    root: str = "data"
    """Folder holding ``cifar-100-python/`` (or its ``.tar.gz``), or for ``imagefolder`` the
    ``train/`` and ``val/`` folders (one sub-folder per class); unused for the bundled ones."""
    num_workers: int = 0
    """Loader worker processes of the streaming image-folder loader (the in-memory CIFAR
    loader needs none)."""
    resident: bool = False
    """Keep the whole training set on the training device (GPU fast path, in-memory sets)."""
    image_size: int = 224
    """Image folders: the training crop (RandomResizedCrop) and the evaluation centre crop."""
    eval_resize: int = 256
    """Image folders: the shorter side evaluation images are resized to before the crop."""
    rand_augment: str = ""
    """Image folders: timm's RandAugment policy string added to the training transform
    (e.g. ``rand-m9-mstd0.5-inc1``, the DeiT recipe); empty: off."""
    random_erasing: float = 0.0
    """Image folders: probability of timm's random erasing on a training image; 0: off."""
    repeated_augmentations: int = 0
    """Image folders: repeated augmentation (each sample seen this many times per epoch,
    differently augmented, on different processes; DeiT uses 3); 0: off."""
    strong_view: str = ""
    """A second, strongly augmented view of every training image, beside the weak one (the
    data set's own training transform): ``mlkd``, MLKD's (Jin, Wang, Lin, CVPR 2023) crop
    and flip, two random operations of their RandAugment and Cutout
    (:mod:`ndkd.data.strong_augment`); empty: off. Each step then runs the student and the
    teacher on each view separately; a term reads the weak view, or the one its name
    names (``ce@strong``). Single-label sets only (CIFAR, digits, image folders: there the
    strong view is RandomResizedCrop and flip, then the policy); training batches are then
    made per sample with ``data.num_workers`` workers."""
    mixup: float = 0.0
    """Mixup of training batches: Beta(alpha, alpha) with this alpha (DeiT: 0.8); 0: off.
    The ``ce`` term then takes the mixed class weights as soft targets and ``nd`` the class
    means mixed by the same weights."""
    cutmix: float = 0.0
    """CutMix of training batches with this Beta alpha (DeiT: 1.0); 0: off."""
    mixup_prob: float = 1.0
    """Probability that a training batch is mixed (when mixup or cutmix is on)."""
    mixup_switch_prob: float = 0.5
    """With both on: probability of CutMix rather than mixup for a batch."""
    train_sizes: list[int] = field(default_factory=lambda: [800])
    """Detection: shorter sides a training image is resized to, one drawn per image (a
    range of sizes: multi-scale training, e.g. 640 to 800)."""
    test_size: int = 800
    """Detection: the shorter side evaluation images are resized to."""
    max_size: int = 1333
    """Detection: the longest side is capped at this many pixels."""


@dataclass
class ModelConfig:
    arch: str = ""
    """A CIFAR zoo name (``ndkd.models.list_models()``), ``mobilenet_v1``
    (``list_models("imagenet")``), ``torchvision:NAME`` (any torchvision classifier) or
    ``timm:NAME`` (any timm model); empty for no model."""
    checkpoint: str | None = None
    """Weights to load (public ``{"model": state_dict}`` layout, a bare state dict, or a run's
    ``last.pt``/``best.pt``); ``{seed}`` in it is replaced by the seed (e.g. a second stage
    starting from the first stage's run of the same seed)."""
    pretrained: bool = False
    """``torchvision:``/``timm:`` models: start from that library's ImageNet weights
    (downloaded by it: needs internet on first use)."""
    drop_path: float = 0.0
    """``timm:`` models: stochastic depth rate (``drop_path_rate``); 0: off."""
    grad_checkpointing: bool = False
    """``timm:`` students: recompute block activations in the backward pass instead of
    keeping them (less memory for large students, about a third more compute)."""
    pool: Literal["", "avg", "max", "avgmax"] = ""
    """``torchvision:`` models: the global pooling before the classifier: ``avg`` (GAP),
    ``max`` (GMP) or ``avgmax`` (their mean, LSHFM's GWP); empty: the model's own."""
    embedding_dim: int = 0
    """``torchvision:`` models: N > 0 inserts a ``Linear(D, N)`` between the pooled feature
    and the classifier (LSHFM's ``feat_fc``): the embedding is its output. 0: none."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the model's builder (torchvision's, timm's, or a detector's such
    as ``box_batch_size_per_image``); one the builder does not take is refused."""


@dataclass
class TeacherConfig(ModelConfig):
    """The teacher: a :class:`ModelConfig` plus what only a frozen teacher has."""

    bn: Literal["eval", "train"] = "eval"
    """BatchNorm mode of the teacher's forward in each training step. ``eval`` (default):
    its running statistics, a fixed map (the trainer folds each BatchNorm into the
    convolution before it). ``train``: statistics of the batch, as both public OFD codes
    (clovaai/overhaul-distillation, mdistiller) run the teacher in the distiller's training
    mode; its running statistics update as a side effect and are never saved. Only the
    BatchNorms change mode (dropout and the like stay in eval), the teacher's weights stay
    frozen, and everything else that runs the teacher (class means, build-time passes such
    as LSHFM's bias, analysis) runs it in eval mode. Refused on the student, which always
    trains with batch statistics."""


@dataclass
class CentersConfig:
    path: str | None = None
    """Class-means file (ndkd safetensors or public JSON); ``ndkd centers`` writes it. Read
    only by terms that use the teacher class means (``nd``, ``cosine``, ``infonce``)."""
    transform: Literal["train", "test"] = "train"
    """Pass used by ``ndkd centers``: with training augmentation (as the paper) or without."""


@dataclass
class TermConfig:
    """One loss term: its registered name, its single weight, its warm-up, its own params.

    The weight is multiplied by ``min(1, (epoch + warmup_from) / warmup_epochs)`` with the
    engine's epochs counted from 0; ``warmup_epochs: 0`` (default) means full weight from
    the start. ``warmup_from`` says how the warm-up counts epochs:

    - ``0`` (default): the first epoch is epoch 0, so a 20-epoch warm-up trains the first
      epoch without the term (the public ND code's KD warm-up);
    - ``1``: the first epoch is epoch 1, so it already has 1/20 of the weight (mdistiller,
      DKD's official code: ``min(epoch / warmup, 1.0)`` with epochs from 1).

    ``warmup_from`` is only accepted with ``warmup_epochs`` > 0, and is written to a
    resolved config only when it is 1.
    """

    name: str = ""
    weight: float = 1.0
    warmup_epochs: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    warmup_from: int = 0


@dataclass
class TrainConfig:
    epochs: int = 240
    iterations: int = 0
    """N > 0: train exactly N optimizer steps instead of ``epochs`` passes (the detection
    schedules); ``milestones`` and ``lr_warmup_iterations`` then count steps, and
    ``epochs`` is unused (the run makes as many passes as the budget takes, the last one
    cut short; each epoch record holds its ``iteration``)."""
    batch_size: int = 128
    """Total batch over all processes."""
    lr: float = 0.1
    lr_reference_batch: int = 0
    """0: ``lr`` is the learning rate. N > 0: ``lr`` is per N images and the run uses
    ``lr * batch_size / N`` (the linear scaling rule, stated in the config, logged)."""
    min_lr: float = 0.0
    """Cosine schedule: the learning rate it decays to (absolute)."""
    optimizer: Literal["sgd", "adamw"] = "sgd"
    """``sgd`` (momentum, optional Nesterov) or ``adamw`` (``betas``)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's (beta1, beta2)."""
    momentum: float = 0.9
    nesterov: bool = True
    """Nesterov momentum (needs ``momentum > 0``)."""
    weight_decay: float = 5e-4
    decay_norms_and_biases: bool = True
    """false: no weight decay on normalization weights, biases, position embeddings and
    class/distillation tokens (the ViT recipes); true: every parameter decays."""
    clip_grad_norm: float = 0.0
    """Clip the global gradient norm to this value; 0: off."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the student's weights with this decay (e.g.
    0.99996) and evaluate it alongside (``ema_test_*`` metrics); 0: off."""
    schedule: Literal["multistep", "cosine"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210])
    gamma: float = 0.1
    lr_warmup_epochs: float = 0.0
    """Linear learning-rate warm-up from 0, counted in (fractional) epochs, per step."""
    lr_warmup_iterations: int = 0
    """With ``iterations``: the warm-up in optimizer steps (``lr_warmup_epochs`` must be 0)."""
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    eval_every: int = 1
    """Evaluate on the test split every N epochs (and always after the last)."""
    checkpoint_every_steps: int = 0
    """Also write ``last.pt`` inside an epoch every N steps, with the loader's position, so
    a run resumes mid-epoch with the data order of an uninterrupted run (0: epoch ends only)."""
    checkpoint_every_minutes: float = 0.0
    """Also write ``last.pt`` inside an epoch when this many minutes passed since the last
    checkpoint (0: off); checked where progress is reported."""
    trainable: Literal["all", "embedding_projection"] = "all"
    """Student parameters the optimizer updates: ``all``, or only the projection of
    ``student.embedding_dim`` (LSHFM's first stage; the rest stays as loaded, batch-norm
    statistics still update as in the authors' code)."""


@dataclass
class LogConfig:
    tensorboard: bool = False
    """Also write TensorBoard event files beside ``metrics.jsonl`` (needs the
    ``tensorboard`` extra)."""
    progress_every: int = 20
    """Steps between progress reports on a terminal and, with several processes, between
    their checks for a stop signal or a checkpoint due by the clock (one small all-reduce);
    0: only at epoch ends."""


@dataclass
class RunConfig:
    seed: int = 0
    """Random seed, in ``[0, 2**32 - 1]``."""
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    output_dir: str = "runs/default"
    """Run folder; ``{seed}`` in it is replaced by the seed (one folder per seed)."""
    recipe: str = ""
    """The recipe's name: by default, for a file below a ``configs/`` folder, its path below
    that folder without ``.yaml`` (``cifar100/kd++/resnet56_resnet20``); ``ndkd analyze``
    shows the published number of a recipe of that name beside its runs."""
    task: Literal["classification", "multilabel", "detection"] = "classification"
    """The task the run trains: ``classification`` (one label per image) or ``multilabel``
    (a set of labels per image; needs a multi-label data set: voc2007, coco2014,
    digit_canvas) or ``detection`` (boxes; coco, voc0712, digit_boxes)."""
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    centers: CentersConfig = field(default_factory=CentersConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    terms: list[TermConfig] = field(default_factory=lambda: [TermConfig("ce", 1.0)])
    """Loss terms, e.g. ``[{name: ce, weight: 1}, {name: kd, weight: 1, temperature: 4}]``."""
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``config.yaml`` holds); terms as ``{name, weight, ...params}``."""
        plain = dataclasses.asdict(self)
        plain["terms"] = [_term_to_dict(term) for term in self.terms]
        return plain


def _term_to_dict(term: TermConfig) -> dict[str, Any]:
    plain = {"name": term.name, "weight": term.weight, **term.params}
    if term.warmup_epochs:
        plain["warmup_epochs"] = term.warmup_epochs
    if term.warmup_from:
        plain["warmup_from"] = term.warmup_from
    return plain


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> RunConfig:
    """Read a YAML file and its bases (or the defaults when ``path`` is None), apply
    ``key=value`` overrides (dotted keys; list items by index, e.g. ``terms.1.weight=2``),
    validate. An error inside a file names that file."""
    raw: dict[str, Any] = {} if path is None else _read_with_bases(Path(path), ())
    if path is not None and "recipe" not in raw:
        raw["recipe"] = recipe_name(Path(path))
    for item in overrides:
        _apply_override(raw, item)
    return from_dict(raw)


def recipe_name(path: Path) -> str:
    """The path of ``path`` below its nearest ``configs/`` folder, without its suffix
    (``configs/cifar100/kd/x.yaml`` -> ``cifar100/kd/x``); empty when no folder above it
    is called so."""
    resolved = path.resolve()
    for folder in resolved.parents:
        if folder.name == CONFIGS_FOLDER:
            return resolved.relative_to(folder).with_suffix("").as_posix()
    return ""


def from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from plain data."""
    config = _build(RunConfig, raw, "")
    _validate(config)
    seed = str(config.seed)
    config.output_dir = config.output_dir.replace("{seed}", seed)
    for model in (config.student, config.teacher):
        if model.checkpoint:
            model.checkpoint = model.checkpoint.replace("{seed}", seed)
    return config


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (what a run folder's ``config.yaml`` holds)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Sorted dotted keys whose values differ between two resolved config dicts.

    Nested mappings are compared leaf by leaf; lists are compared whole (all loss terms
    are one key, ``terms``). A key present on one side only is a difference, so pass both
    through ``from_dict(...).to_dict()`` when one may predate keys added since.
    """
    old_leaves, new_leaves = _leaves(old, ""), _leaves(new, "")
    missing = object()
    return sorted(
        key
        for key in old_leaves.keys() | new_leaves.keys()
        if old_leaves.get(key, missing) != new_leaves.get(key, missing)
    )


def resume_conflicts(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The differences that forbid resuming a run stored with ``old`` under ``new``.

    Safe to change on resume: :data:`SPEED_ONLY_KEYS`, :data:`OUTPUT_ONLY_KEYS`, and
    ``train.epochs`` when it increased (training on to a later end).
    """
    safe = set(SPEED_ONLY_KEYS) | set(OUTPUT_ONLY_KEYS)
    conflicts = [key for key in config_differences(old, new) if key not in safe]
    if "train.epochs" in conflicts and _epochs_increased(old, new):
        conflicts.remove("train.epochs")
    return conflicts


def _epochs_increased(old: dict[str, Any], new: dict[str, Any]) -> bool:
    before = old.get("train", {}).get("epochs")
    after = new.get("train", {}).get("epochs")
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (before, after))
    return numbers and after > before


def _leaves(node: dict[str, Any], prefix: str) -> dict[str, Any]:
    leaves: dict[str, Any] = {}
    for key, value in node.items():
        dotted = _join(prefix, str(key))
        if isinstance(value, dict) and value:
            leaves.update(_leaves(value, dotted))
        else:
            leaves[dotted] = value
    return leaves


# --- reading files ---------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated in one mapping (PyYAML keeps the last
    silently). Errors are :class:`yaml.MarkedYAMLError` naming the dotted key and line."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_duplicate_keys(node, "", set())
        return super().construct_document(node)


def _check_duplicate_keys(node: yaml.Node, where: str, visited: set[int]) -> None:
    if id(node) in visited:  # an alias: checked where its anchor is (also ends a cycle)
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[tuple[str, str]] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                dotted = _join(where, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {dotted!r}", key_node.start_mark
                    )
                seen.add(key)
            else:
                dotted = where
            _check_duplicate_keys(value_node, dotted, visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(item, _join(where, str(index)), visited)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line: what is wrong and where (PyYAML's own message spans several lines)."""
    if isinstance(error, yaml.MarkedYAMLError):
        problem = error.problem or error.context or "invalid"
        mark = error.problem_mark or error.context_mark
        if mark is not None:
            return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
        return problem
    return " ".join(str(error).split())


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text file (it does not decode as UTF-8)") from error
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from error
    try:
        raw = _parse_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(error)})") from error
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {_kind(raw)}")
    return raw


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """``path``'s mapping over its bases, merged (``chain``: the files naming this one)."""
    identity = path.resolve()
    if identity in [p.resolve() for p in chain]:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"{BASE_KEY}: the bases form a cycle: {cycle}")
    raw = _read_file(path)
    names = raw.pop(BASE_KEY, None)
    if names is None:
        names = []
    elif isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(
            f"{path}: {BASE_KEY}: expected a path or a list of paths, found {names!r}"
        )
    try:  # keys and types of this file alone, so that an error names the file holding it
        _build(RunConfig, raw, "")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    merged: dict[str, Any] = {}
    for name in names:
        base = Path(os.path.normpath(path.parent / name))
        if not base.is_file():
            raise ConfigError(f"{path}: {BASE_KEY} file not found: {base}")
        merged = _deep_merge(merged, _read_with_bases(base, (*chain, path)))
    return _deep_merge(merged, raw)


def _deep_merge(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``under``: mappings merge recursively, anything else is replaced."""
    merged = dict(under)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- overrides -------------------------------------------------------------------------


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.05)")
    if key == BASE_KEY:
        raise ConfigError(f"override {item!r}: {BASE_KEY} can only be named in a config file")
    try:
        value = _parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML ({_yaml_problem(error)})"
        ) from error
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]))
    _assign(node, parts[-1], value, key)


def _child(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        index = _index(part, len(node), where)
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: cannot set a key inside a value of type {_kind(node)}")
    if part == "terms" and "terms" not in node:
        node["terms"] = [_term_to_dict(term) for term in RunConfig().terms]
    child = node.setdefault(part, {})
    if child is None:  # "teacher:" left empty in a file
        child = node[part] = {}
    return child


def _assign(node: Any, part: str, value: Any, where: str) -> None:
    if isinstance(node, list):
        node[_index(part, len(node), where)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"{where}: cannot set a key inside a value of type {_kind(node)}")


def _index(part: str, length: int, where: str) -> int:
    if not part.isdigit() or int(part) >= length:
        raise ConfigError(f"{where}: expected a list index below {length}, found {part!r}")
    return int(part)


# --- building and checking -------------------------------------------------------------


def _build(cls: type, raw: Any, where: str) -> Any:
    if cls is TermConfig:
        return _build_term(raw, where)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, found {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known, key=str)
    if unknown and cls is ModelConfig and str(unknown[0]) in _TEACHER_ONLY:
        raise ConfigError(
            f"{_join(where, str(unknown[0]))}: a key of the teacher only "
            f"(teacher.{unknown[0]}), not of the student"
        )
    if unknown:
        raise ConfigError(
            f"unknown config key {_join(where, str(unknown[0]))!r}; "
            f"known keys here: {', '.join(sorted(known))}"
        )
    values = {name: _coerce(hints[name], raw[name], _join(where, name)) for name in raw}
    return cls(**values)


_TEACHER_ONLY = frozenset(f.name for f in dataclasses.fields(TeacherConfig)) - frozenset(
    f.name for f in dataclasses.fields(ModelConfig)
)


def _build_term(raw: Any, where: str) -> TermConfig:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"{where}: a loss term is a mapping with a 'name', found {raw!r}")
    params = {
        key: _term_param(str(key), value, f"{where}.{key}")
        for key, value in raw.items()
        if key not in TERM_KEYS
    }
    weight = _coerce(float, raw.get("weight", 1.0), f"{where}.weight")
    if weight < 0:
        raise ConfigError(f"{where}.weight: must be non-negative, found {weight}")
    warmup = _coerce(float, raw.get("warmup_epochs", 0.0), f"{where}.warmup_epochs")
    if warmup < 0:
        raise ConfigError(f"{where}.warmup_epochs: must be non-negative, found {warmup}")
    warmup_from = 0
    if "warmup_from" in raw:
        warmup_from = raw["warmup_from"]
        if isinstance(warmup_from, bool) or warmup_from not in WARMUP_FROM:
            raise ConfigError(
                f"{where}.warmup_from: expected 0 (epochs counted from 0, the public ND "
                f"code) or 1 (from 1, mdistiller), found {warmup_from!r}"
            )
        if not warmup:
            raise ConfigError(
                f"{where}.warmup_from: counts the epochs of a warm-up, but "
                f"{where}.warmup_epochs is 0 (no warm-up); set warmup_epochs or drop it"
            )
        warmup_from = int(warmup_from)
    return TermConfig(raw["name"], weight, warmup, params, warmup_from)


def _term_param(name: str, value: Any, where: str) -> Any:
    """A term param as given, with numbers checked: never NaN or infinite (also not as the
    words YAML leaves as strings), and the well-known ones in range."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 5e-4 as a string
    _check_finite(value, where)
    if name in POSITIVE_TERM_PARAMS + NON_NEGATIVE_TERM_PARAMS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        if name in POSITIVE_TERM_PARAMS and value <= 0:
            raise ConfigError(f"{where}: must be positive, found {value}")
        if value < 0:
            raise ConfigError(f"{where}: must be non-negative, found {value}")
    return value


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, found {value}")
    if isinstance(value, str) and _NON_FINITE_WORD.fullmatch(value.strip()):
        raise ConfigError(f"{where}: must be a finite number, found {value!r}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}.{index}")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")


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
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, found {value}")
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
        "data.image_size": config.data.image_size,
        "data.test_size": config.data.test_size,
        "data.max_size": config.data.max_size,
        "data.eval_resize": config.data.eval_resize,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, found {value}")
    for key, value in {
        "train.momentum": train.momentum,
        "train.weight_decay": train.weight_decay,
        "train.lr_warmup_epochs": train.lr_warmup_epochs,
        "data.num_workers": config.data.num_workers,
        "log.progress_every": config.log.progress_every,
        "train.checkpoint_every_steps": train.checkpoint_every_steps,
        "train.checkpoint_every_minutes": train.checkpoint_every_minutes,
        "train.lr_reference_batch": train.lr_reference_batch,
        "train.min_lr": train.min_lr,
        "train.clip_grad_norm": train.clip_grad_norm,
        "data.random_erasing": config.data.random_erasing,
        "data.repeated_augmentations": config.data.repeated_augmentations,
        "data.mixup": config.data.mixup,
        "data.cutmix": config.data.cutmix,
        "student.drop_path": config.student.drop_path,
        "teacher.drop_path": config.teacher.drop_path,
    }.items():
        if value < 0:
            raise ConfigError(f"{key}: must be non-negative, found {value}")
    for key, value in {
        "train.betas": train.betas,
        "train.ema_decay": [train.ema_decay],
        "data.random_erasing": [config.data.random_erasing],
        "student.drop_path": [config.student.drop_path],
    }.items():
        if not all(0 <= v < 1 for v in value):
            raise ConfigError(f"{key}: values must be in [0, 1), found {value}")
    for key, value in {
        "data.mixup_prob": config.data.mixup_prob,
        "data.mixup_switch_prob": config.data.mixup_switch_prob,
    }.items():
        if not 0 <= value <= 1:
            raise ConfigError(f"{key}: must be a probability in [0, 1], found {value}")
    effective = train.lr * (
        train.batch_size / train.lr_reference_batch if train.lr_reference_batch else 1
    )
    if train.min_lr > effective:
        raise ConfigError(
            f"train.min_lr: {train.min_lr} is above the learning rate it decays from "
            f"({effective:g}); the cosine schedule would rise"
        )
    if len(train.betas) != 2:
        raise ConfigError(f"train.betas: expected two numbers (beta1, beta2), found {train.betas}")
    if train.nesterov and train.momentum <= 0 and train.optimizer == "sgd":
        raise ConfigError(
            "train.nesterov: Nesterov needs train.momentum > 0 (found "
            f"{train.momentum}); set train.nesterov=false or a positive train.momentum"
        )
    for key, value in {
        "train.iterations": train.iterations,
        "train.lr_warmup_iterations": train.lr_warmup_iterations,
    }.items():
        if value < 0:
            raise ConfigError(f"{key}: must be non-negative, found {value}")
    if train.iterations and train.lr_warmup_epochs:
        raise ConfigError(
            "train.lr_warmup_epochs: with train.iterations the warm-up counts steps; set "
            "train.lr_warmup_iterations instead"
        )
    if train.lr_warmup_iterations and not train.iterations:
        raise ConfigError(
            "train.lr_warmup_iterations: counts steps of an iteration budget, but "
            "train.iterations is 0; use train.lr_warmup_epochs"
        )
    if sorted(train.milestones) != train.milestones:
        raise ConfigError(f"train.milestones: must be increasing, found {train.milestones}")
    if not 0 <= config.seed <= SEED_MAX:
        raise ConfigError(f"seed: must be in [0, {SEED_MAX}], found {config.seed}")
    if not _DEVICE.fullmatch(config.device):
        raise ConfigError(f"device: expected {DEVICE_FORMS}, found {config.device!r}")
    if not config.output_dir.strip():
        raise ConfigError("output_dir: must name a folder")
    names = list(dataset_names())
    if config.data.name not in names:
        raise ConfigError(f"data.name: expected one of {names}, found {config.data.name!r}")
    streaming_only = {
        "data.rand_augment": config.data.rand_augment,
        "data.random_erasing": config.data.random_erasing,
        "data.repeated_augmentations": config.data.repeated_augmentations,
    }
    for key, value in streaming_only.items():
        if value and config.data.name != "imagefolder":
            raise ConfigError(
                f"{key}: an image-folder augmentation (data.name: imagefolder); "
                f"{config.data.name} uses its own fixed batched augmentation"
            )
    data_task = task_of(config.data.name)
    if data_task != config.task:
        raise ConfigError(
            f"task: {config.data.name} has {data_task} labels, found task: {config.task}"
        )
    _check_strong_view(config)
    if config.task != "classification" and (config.data.mixup or config.data.cutmix):
        raise ConfigError(
            f"data.mixup/data.cutmix: single-label augmentations, not for {config.task}"
        )
    if not config.data.train_sizes or min(config.data.train_sizes) <= 0:
        raise ConfigError(
            f"data.train_sizes: one or more positive sizes, found {config.data.train_sizes}"
        )
    for role in ("student", "teacher"):
        if getattr(config, role).embedding_dim < 0:
            raise ConfigError(f"{role}.embedding_dim: must be non-negative")
    if config.train.trainable == "embedding_projection" and not config.student.embedding_dim:
        raise ConfigError(
            "train.trainable: embedding_projection trains the projection of "
            "student.embedding_dim, which is 0 (no projection)"
        )
    if not config.student.arch:
        raise ConfigError("student.arch: required (a zoo name, torchvision:NAME or timm:NAME)")
    if not config.terms and config.task != "detection":
        raise ConfigError(
            "terms: at least one loss term is required (e.g. {name: ce}); only a detector "
            "trains on its own losses alone"
        )
    term_names = [term.name for term in config.terms]
    duplicates = sorted({n for n in term_names if term_names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"terms: each term may appear once, found {duplicates} repeated")


def _check_strong_view(config: RunConfig) -> None:
    data = config.data
    if not data.strong_view:
        return
    if data.strong_view not in STRONG_VIEWS:
        raise ConfigError(
            f"data.strong_view: expected one of {list(STRONG_VIEWS)} or empty (off), "
            f"found {data.strong_view!r}"
        )
    if config.task != "classification":
        raise ConfigError(
            f"data.strong_view: a second view of classification images; task {config.task} has none"
        )
    if data.mixup or data.cutmix:
        raise ConfigError(
            "data.strong_view: not with data.mixup/data.cutmix (a mixed batch of two views "
            "is not defined)"
        )


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: Any) -> str:
    return type(value).__name__
