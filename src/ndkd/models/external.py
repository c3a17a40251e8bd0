"""What torchvision and timm models share once ndkd gives them the output contract.

A model from those libraries keeps its own object, modules and state-dict keys: its class is
swapped for a subclass that adds :class:`SourceModel` (``forward`` returning
:class:`~ndkd.models.output.ModelOutput`, ``stage_info``, ``embedding_dim``,
``get_classifier``). So ``torchvision.models.resnet18().state_dict()`` loads strictly into
``create_model("torchvision:resnet18", 1000)`` and back, and ``isinstance(model, ResNet)``
still holds. Save such a model by its ``state_dict()`` (the swapped class is not importable,
so pickling the whole module object is not supported).
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from ndkd.models.output import StageInfo


class SourceModel(nn.Module):
    """Mixin of every ndkd-adapted torchvision/timm model (first base of the swapped class).

    Attributes:
        num_classes: number of output logits.
        embedding_dim: width of the embedding, the final ``nn.Linear``'s input.
        stage_info: one :class:`StageInfo` per entry of ``ModelOutput.stages``.
        classifier_name: dotted name of the final ``nn.Linear``.
    """

    num_classes: int
    embedding_dim: int
    stage_info: list[StageInfo]
    classifier_name: str

    def get_classifier(self) -> nn.Linear:
        """The final linear layer, whose input is the embedding."""
        layer = self.get_submodule(self.classifier_name)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{self.classifier_name!r} is a {type(layer).__name__}, not nn.Linear")
        return layer


M = TypeVar("M", bound=SourceModel)
_CLASSES: dict[tuple[type, type], type] = {}


def adopt(model: nn.Module, mixin: type[M], classifier_name: str, stage_info: list[StageInfo]) -> M:
    """Give ``model`` the contract of ``mixin`` in place (its class becomes a subclass of
    ``mixin`` and of its own class, one per pair) and set the contract's attributes."""
    key = (mixin, type(model))
    if key not in _CLASSES:
        prefix = mixin.__name__.removesuffix("Model")
        _CLASSES[key] = type(
            f"{prefix}{type(model).__name__}", key, {"__module__": mixin.__module__}
        )
    model.__class__ = _CLASSES[key]
    adopted: M = model  # type: ignore[assignment]  # its class is now a subclass of mixin
    classifier = adopted.get_submodule(classifier_name)
    adopted.classifier_name = classifier_name
    adopted.num_classes = classifier.out_features
    adopted.embedding_dim = classifier.in_features
    adopted.stage_info = stage_info
    return adopted


def classifier_name_of(model: nn.Module, layer: object, label: str) -> str:
    """The dotted name of ``layer`` in ``model``, which must be an ``nn.Linear`` (a string
    describes what produces the logits instead).

    Raises:
        ValueError: ``layer`` is not an ``nn.Linear`` registered in ``model``.
    """
    if not isinstance(layer, nn.Linear):
        found = layer if isinstance(layer, str) else f"of type {type(layer).__name__}"
        raise ValueError(
            f"{label}: the final layer is {found}, not an nn.Linear; ndkd takes the embedding "
            "from the input of a final linear classifier"
        )
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"{label}: the final nn.Linear is not a registered submodule")
