"""``torchvision:NAME``: any torchvision classifier under the ndkd output contract.

The model is traced once per mode (train, eval) with ``torch.fx`` (torchvision's
``NodePathTracer``, the tracer of its ``feature_extraction``, with the same leaf modules) and
its graph is rewritten to return ``(logits, embedding, stages, pre-activations)``; the
generated code runs on the model's own modules, so one forward gives everything and the
parameters keep torchvision's names. Rules, all structural (no per-architecture code):

- **logits** are the graph's output (the first item when it is a tuple, as Inception's
  training output); they must come from an ``nn.Linear`` module, whose input is the
  **embedding** (so the embedding is exactly what the classifier sees, dropout included).
- **blocks** are the model's children, looking through plain ``nn.Sequential``,
  ``nn.ModuleList`` and ``nn.ModuleDict`` containers (ResNet: ``conv1``, ``bn1``, ``relu``,
  ``maxpool``, ``layer1.0``, ...; MobileNetV2: ``features.0`` ... ``features.18``); an
  operation outside any block counts as a block of its own.
- **stages**: one probe forward on a square image (64 px, or the weights' ``min_size``)
  gives each block's output shape; a block output is a stage candidate when it is an NCHW
  map of at least 2x2 whose size divides the probe size (stride = probe size / map size) and
  it is neither an adaptive pooling nor after the embedding. The stages are the last
  candidate of each stride, strides increasing. ResNets: ``relu`` (stride 2, the stem slot
  feature methods skip), ``layer1`` .. ``layer4`` (strides 4 to 32), the maps of the public
  ImageNet KD code. torchvision's transformers (``vit_*``, ``swin_*``) give their patch
  embedding at most: use ``timm:`` ViTs for token-map stages.
- **pre-activations**: where a stage map is produced by a ReLU, its input (ResNet: the
  residual sum, the ``bn1`` output for the stem); that ReLU then runs out of place, and a
  residual sum whose first term is a BatchNorm output used nowhere else is added in place
  (as torchvision's eager ``out += identity`` does), so the pre-activation is that BN's
  output tensor (what OFD's margin search looks for). Other stages (ReLU6 or linear block
  ends, e.g. MobileNetV2) give the stage map itself as pre-activation.

Two options change the head, both structurally, on the weights already loaded:

- ``pool`` (``"avg"``, ``"max"``, ``"avgmax"``: the mean of both, LSHFM's GWP) replaces the
  model's last adaptive pooling before the embedding, which must be global (output 1x1), with
  that pooling to the same output size: a pooling module (ResNet's ``avgpool``) becomes a
  :class:`GlobalPool2d`, a functional call (MobileNetV2's ``F.adaptive_avg_pool2d``) calls
  :func:`global_pool`. A model without such a pooling (VGG pools to 7x7 before an MLP head,
  ShuffleNetV2 takes a mean) is refused: it keeps its own head.
- ``embedding_dim`` N > 0 replaces the final ``nn.Linear(D, C)`` by a
  :class:`ProjectedClassifier` (``projection``: ``Linear(D, N)``, LSHFM's ``feat_fc``;
  ``classifier``: ``Linear(N, C)``; PyTorch's default init for both, the init of the
  authors' ResNet, where their MobileNetV2 draws N(0, 0.01) with zero biases), under the
  final layer's name (ResNet: ``fc.projection``, ``fc.classifier``). The embedding is then
  the projection's output, the logits come from ``classifier``, and
  :meth:`TorchvisionModel.embedding_projection` returns the projection. What ran between the
  pooling and the final layer stays before the projection (MobileNetV2's dropout, which the
  authors apply after ``feat_fc``).

Training-only auxiliary heads (Inception-V3's, GoogLeNet's) are not run; under DDP build
those models with ``aux_logits=False``. ``in_channels != 3`` replaces the first ``Conv2d``
(Kaiming-normal init). Pretrained
weights come from torchvision (``weights="DEFAULT"``); for ``num_classes != 1000`` the final
``nn.Linear`` is then replaced by a freshly initialised one.
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ndkd.models import pretrained as weights_source
from ndkd.models.base import replace_stem_conv
from ndkd.models.external import SourceModel, adopt, classifier_name_of
from ndkd.models.output import ModelOutput, StageInfo

log = logging.getLogger(__name__)

PROBE_SIZE = 64
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_OPERATIONS = ("call_module", "call_function", "call_method")
_RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu_}
_ADD_FUNCTIONS = {operator.add, torch.add}
POOLS = ("", "avg", "max", "avgmax")

Program = Callable[..., tuple[Any, ...]]
PoolSize = int | tuple[int | None, ...] | None


def global_pool(x: torch.Tensor, output_size: PoolSize, mode: str) -> torch.Tensor:
    """Adaptive pooling of the NCHW map ``x`` to ``output_size``: ``mode`` ``"avg"``,
    ``"max"``, or ``"avgmax"`` (the mean of both)."""
    if mode == "avg":
        return F.adaptive_avg_pool2d(x, output_size)
    if mode == "max":
        return F.adaptive_max_pool2d(x, output_size)
    if mode == "avgmax":
        return (F.adaptive_avg_pool2d(x, output_size) + F.adaptive_max_pool2d(x, output_size)) / 2
    raise ValueError(f"unknown pooling {mode!r}; expected avg, max or avgmax")


class GlobalPool2d(nn.Module):
    """:func:`global_pool` as a module (what the ``pool`` option puts in place of a pooling
    module)."""

    def __init__(self, mode: str, output_size: PoolSize) -> None:
        super().__init__()
        self.mode = mode
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_pool(x, self.output_size, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, output_size={self.output_size}"


_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, GlobalPool2d)
_ADAPTIVE_POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, global_pool}


class ProjectedClassifier(nn.Module):
    """``classifier(projection(x))``: the head the ``embedding_dim`` option puts in place of
    a model's final ``nn.Linear(in_features, num_classes)``."""

    def __init__(self, in_features: int, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.projection = nn.Linear(in_features, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.projection(x))


class TorchvisionModel(SourceModel):
    """Mixin of adapted torchvision classifiers; see the module documentation."""

    _ndkd_programs: tuple[Program, Program]  # (eval, train) generated forward functions

    def forward(self, x: torch.Tensor) -> ModelOutput:
        logits, embedding, stages, preacts = self._ndkd_programs[self.training](self, x)
        return ModelOutput(logits, embedding, list(stages), list(preacts))

    def embedding_projection(self) -> nn.Linear | None:
        """The ``Linear(D, embedding_dim)`` that gives the embedding when the model was built
        with ``embedding_dim > 0`` (LSHFM's ``feat_fc``), else ``None``."""
        head = self.get_submodule(self.classifier_name.rpartition(".")[0])
        return head.projection if isinstance(head, ProjectedClassifier) else None


def classifier_names() -> list[str]:
    """torchvision's classification model names."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def create_torchvision_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    pretrained: bool,
    *,
    pool: str = "",
    embedding_dim: int = 0,
    **options: Any,
) -> TorchvisionModel:
    """``torchvision.models.get_model(arch, ...)`` under the ndkd output contract.

    ``pool`` (``""``: the model's own, ``"avg"``, ``"max"``, ``"avgmax"``) and
    ``embedding_dim`` (0: none) change the head (module documentation); ``options`` go to
    torchvision's builder (e.g. ``dropout``, ``width_mult``).

    Raises:
        ValueError: unknown name, a final layer that is not an ``nn.Linear``, a model that
            ``torch.fx`` cannot trace, pretrained weights that cannot be fetched, an unknown
            ``pool`` or one the model has no global adaptive pooling for, a negative
            ``embedding_dim``.
    """
    import torchvision

    label = f"torchvision:{arch}"
    if pool not in POOLS:
        raise ValueError(f"{label}: unknown pool {pool!r}; expected one of {POOLS}")
    if embedding_dim < 0:
        raise ValueError(f"{label}: embedding_dim must be non-negative, got {embedding_dim}")
    if arch not in classifier_names():
        raise ValueError(
            f"unknown model {label!r}: not a torchvision classifier; list them with "
            "torchvision.models.list_models(module=torchvision.models)"
        )
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        if pretrained:
            url = weights.url
            if not weights_source.torch_hub_cached(url):
                reason = weights_source.unreachable(url)
                if reason is not None:
                    raise weights_source.download_error(label, reason)
                log.info("%s: downloading pretrained weights from %s", label, url)
            model = weights_source.fetch(
                label,
                lambda: torchvision.models.get_model(
                    arch, weights=weights, progress=False, **options
                ),
            )
        else:
            model = torchvision.models.get_model(arch, num_classes=num_classes, **options)
    except TypeError as error:  # an option the builder does not take
        raise ValueError(f"{label}: {error}") from None
    if in_channels != 3:
        if pretrained:
            log.warning("%s: the %d-channel stem conv is newly initialised", label, in_channels)
        replace_stem_conv(model, in_channels)
    probe_size = max(PROBE_SIZE, *weights.meta.get("min_size", (1, 1)))
    probe = torch.zeros(1, in_channels, probe_size, probe_size)  # shapes only
    was_training = model.training
    try:
        return _adapt(model, num_classes, pretrained, probe, label, pool, embedding_dim)
    finally:
        model.train(was_training)


def _adapt(
    model: nn.Module,
    num_classes: int,
    pretrained: bool,
    probe: torch.Tensor,
    label: str,
    pool: str,
    embedding_dim: int,
) -> TorchvisionModel:
    """Trace both modes, find the classifier, change the head as asked, find the stages,
    give ``model`` the contract."""
    graphs = {mode: _trace(model, mode, label) for mode in (False, True)}
    eval_graph, eval_names = graphs[False]
    _, classifier = _logits_node(model, eval_graph, label)
    name = classifier_name_of(model, classifier, label)
    if pool:
        for graph, names in graphs.values():
            _set_pool(model, graph, names, pool, label)
    if embedding_dim:
        log.info("%s: %r becomes a %d-d projection and a classifier", label, name, embedding_dim)
        head = ProjectedClassifier(classifier.in_features, embedding_dim, num_classes)
        model.set_submodule(name, head)
        for graph, _ in graphs.values():
            _project_embedding(model, graph, name, label)
        name = f"{name}.classifier"
    elif pretrained and classifier.out_features != num_classes:
        log.info("%s: new %d-way classifier %r on the pretrained weights", label, num_classes, name)
        model.set_submodule(name, nn.Linear(classifier.in_features, num_classes))
    logits, _ = _logits_node(model, eval_graph, label)
    stage_names, stage_info = _select_stages(model, eval_graph, eval_names, logits, probe)
    programs = tuple(_compile(*graphs[mode], stage_names, model, label) for mode in (False, True))
    adapted = adopt(model, TorchvisionModel, name, stage_info)
    adapted._ndkd_programs = programs
    return adapted


def _tracer() -> fx.Tracer:
    """torchvision's feature-extraction tracer with its default leaf modules and wrapping."""
    import torchvision
    from torchvision.models.feature_extraction import NodePathTracer

    leaves = [
        obj
        for _, obj in inspect.getmembers(torchvision.ops)
        if inspect.isclass(obj) and issubclass(obj, nn.Module)
    ]
    return NodePathTracer(autowrap_modules=(math, torchvision.ops), leaf_modules=leaves)


def _trace(model: nn.Module, training: bool, label: str) -> tuple[fx.Graph, dict[fx.Node, str]]:
    model.train(training)
    tracer = _tracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:
        raise ValueError(
            f"{label}: torch.fx cannot trace this model ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:160]}); ndkd needs its graph for the embedding "
            "and stages"
        ) from None
    return graph, dict(tracer.node_to_qualname)


def _output_node(graph: fx.Graph) -> fx.Node:
    return next(node for node in reversed(graph.nodes) if node.op == "output")


def _logits_node(model: nn.Module, graph: fx.Graph, label: str) -> tuple[fx.Node, Any]:
    """The node giving the logits and the module it calls (for another operation, a
    description of it)."""
    result = _output_node(graph).args[0]
    if isinstance(result, (tuple, list)) and result:
        result = result[0]
    if not isinstance(result, fx.Node):
        raise ValueError(f"{label}: cannot find the logits in the model's output")
    if result.op == "call_module":
        return result, model.get_submodule(result.target)
    return result, f"the operation {getattr(result.target, '__name__', result.target)!s}"


def _blocks(model: nn.Module) -> set[str]:
    found: set[str] = set()

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            if type(child) in _CONTAINERS:
                visit(child, f"{prefix}{name}.")
            else:
                found.add(f"{prefix}{name}")

    visit(model, "")
    return found


def _block_of(qualname: str, blocks: set[str]) -> str:
    parts = qualname.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in blocks:
            return prefix
    return qualname


def _is_adaptive_pool(model: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), _ADAPTIVE_POOLS)
    return node.op == "call_function" and node.target in _ADAPTIVE_POOL_FUNCTIONS


def _pool_size(model: nn.Module, node: fx.Node) -> PoolSize:
    """The output size of the adaptive pooling ``node``."""
    if node.op == "call_module":
        return model.get_submodule(node.target).output_size
    return node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]


def _set_pool(
    model: nn.Module, graph: fx.Graph, names: dict[fx.Node, str], pool: str, label: str
) -> None:
    """Make the last adaptive pooling before the embedding a global ``pool`` pooling of the
    same output size (module documentation)."""
    embedding = _logits_node(model, graph, label)[0].args[0]
    found = None
    for node in graph.nodes:
        if node is embedding:
            break
        if _is_adaptive_pool(model, node):
            found = node
    if found is None:
        raise ValueError(
            f"{label}: pool={pool!r} replaces a global adaptive pooling (nn.AdaptiveAvgPool2d, "
            "F.adaptive_avg_pool2d, ...) before the classifier, and this model has none; "
            "leave pool empty to keep its own"
        )
    size = _pool_size(model, found)
    if not all(side == 1 for side in (size if isinstance(size, (tuple, list)) else (size,))):
        raise ValueError(
            f"{label}: pool={pool!r} needs a global pooling before the classifier, but the "
            f"model's last adaptive pooling ({names.get(found, found.name)}) pools to {size}, "
            "not 1x1; this model keeps its own head (leave pool empty)"
        )
    if found.op == "call_module":
        model.set_submodule(found.target, GlobalPool2d(pool, size))
    else:
        found.target = global_pool
        found.args = (found.args[0], size, pool)
        found.kwargs = {}


def _project_embedding(model: nn.Module, graph: fx.Graph, name: str, label: str) -> None:
    """Rewrite the call of the final layer ``name`` (now a :class:`ProjectedClassifier`) as
    calls of its projection, then of its classifier."""
    logits, _ = _logits_node(model, graph, label)
    if logits.op != "call_module" or logits.target != name:
        raise ValueError(f"{label}: the training-mode graph's logits do not come from {name!r}")
    with graph.inserting_before(logits):
        projected = graph.call_module(f"{name}.projection", logits.args, logits.kwargs)
    logits.target = f"{name}.classifier"
    logits.args = (projected,)
    logits.kwargs = {}


def _select_stages(
    model: nn.Module,
    graph: fx.Graph,
    names: dict[fx.Node, str],
    logits: fx.Node,
    probe: torch.Tensor,
) -> tuple[list[str], list[StageInfo]]:
    """Qualified names of the stage nodes and their :class:`StageInfo` (module doc rules)."""
    module = fx.GraphModule(model, graph)
    module.eval()
    with torch.no_grad():
        ShapeProp(module).propagate(probe)
    embedding = logits.args[0]
    blocks = _blocks(model)
    last: dict[str, fx.Node] = {}
    for node in graph.nodes:
        if node is embedding:
            break
        if node in names and node.op in _OPERATIONS:
            last[_block_of(names[node], blocks)] = node
    size = probe.shape[-1]
    order = {node: index for index, node in enumerate(graph.nodes)}
    chosen: dict[int, fx.Node] = {}
    for node in sorted(last.values(), key=order.__getitem__):
        meta = node.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        if shape is None or len(shape) != 4 or _is_adaptive_pool(model, node):
            continue
        height, width = shape[-2:]
        if height != width or height < 2 or size % height:
            continue
        stride = size // height
        if chosen and stride < max(chosen):
            continue
        chosen[stride] = node
    info = [StageInfo(int(node.meta["tensor_meta"].shape[1]), s) for s, node in chosen.items()]
    return [names[node] for node in chosen.values()], info


def _is_relu(model: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_batchnorm(model: nn.Module, node: object) -> bool:
    return (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and isinstance(model.get_submodule(node.target), nn.modules.batchnorm._BatchNorm)
    )


def _split_preact(model: nn.Module, graph: fx.Graph, stage: fx.Node) -> tuple[fx.Node, fx.Node]:
    """``(stage, preact)`` nodes; a ReLU stage is rebuilt out of place (module doc)."""
    if not _is_relu(model, stage) or not isinstance(stage.args[0], fx.Node):
        return stage, stage
    preact = stage.args[0]
    with graph.inserting_after(stage):
        out = graph.call_function(torch.relu, (preact,))
    stage.replace_all_uses_with(out)
    graph.erase_node(stage)
    first = preact.args[0] if preact.args else None
    if (
        preact.op == "call_function"
        and preact.target in _ADD_FUNCTIONS
        and not preact.kwargs
        and _is_batchnorm(model, first)
        and len(first.users) == 1
    ):
        preact.target = operator.iadd
    return out, preact


def _compile(
    graph: fx.Graph,
    names: dict[fx.Node, str],
    stage_names: list[str],
    model: nn.Module,
    label: str,
) -> Program:
    """The forward function ``f(model, x) -> (logits, embedding, stages, preacts)``."""
    logits, _ = _logits_node(model, graph, label)
    by_name = {qualname: node for node, qualname in names.items()}
    missing = [name for name in stage_names if name not in by_name]
    if missing:
        raise ValueError(f"{label}: the training-mode graph lacks the stage nodes {missing}")
    pairs = [_split_preact(model, graph, by_name[name]) for name in stage_names]
    graph.erase_node(_output_node(graph))
    graph.output((logits, logits.args[0], tuple(s for s, _ in pairs), tuple(p for _, p in pairs)))
    graph.owning_module = model  # lets dead-code elimination check module purity
    graph.eliminate_dead_code()
    graph.owning_module = None
    graph.lint()
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<ndkd {label}>", "exec"), namespace)
    return namespace["forward"]
