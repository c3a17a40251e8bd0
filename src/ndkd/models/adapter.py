"""Give any ``nn.Module`` classifier the ndkd output contract (logits + embedding)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ndkd.models.output import ModelOutput


class EmbeddingAdapter(nn.Module):
    """Wraps a classifier so its forward returns :class:`ModelOutput`.

    The embedding is the input of the classifier's final ``nn.Linear`` (captured by a forward
    hook), so the ND loss works on models ndkd never saw. A model whose output already has
    ``logits`` and ``embedding`` (every ndkd model) passes through unchanged.

    Args:
        model: the classifier. Its output may be a logits tensor, a tuple/list whose first
            element is the logits, a mapping with key ``"logits"``, or an object with a
            ``logits`` attribute.
        classifier: the final linear layer, or its name in ``model.named_modules()``;
            default: :func:`final_linear` of ``model`` (none for a model without an
            ``nn.Linear``, whose output must then carry the embedding). The forward checks
            that this layer's output has the shape of the returned logits and says so if not.
    """

    def __init__(self, model: nn.Module, classifier: nn.Module | str | None = None) -> None:
        super().__init__()
        self.model = model
        layer = _resolve_classifier(model, classifier)
        # In a tuple so nn.Module does not register the model's layer a second time.
        self._classifier: tuple[nn.Module, ...] = () if layer is None else (layer,)
        self._captured: torch.Tensor | None = None
        self._captured_out: torch.Tensor | None = None

    @property
    def classifier(self) -> nn.Module | None:
        """The layer whose input is the embedding (``None``: the output must carry it)."""
        return self._classifier[0] if self._classifier else None

    def _capture(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._captured = args[0]
        self._captured_out = output

    def forward(self, *args: Any, **kwargs: Any) -> ModelOutput:
        # The hook lives only for this call: the wrapped model is never left modified.
        handle = None
        if self.classifier is not None:
            handle = self.classifier.register_forward_hook(self._capture)
        try:
            output = self.model(*args, **kwargs)
            if hasattr(output, "embedding") and hasattr(output, "logits"):
                return output
            logits = _logits_of(output)
            return ModelOutput(logits=logits, embedding=self._embedding_for(logits))
        finally:
            if handle is not None:
                handle.remove()
            self._captured = self._captured_out = None

    def _embedding_for(self, logits: torch.Tensor) -> torch.Tensor:
        name = type(self.model).__name__
        if self.classifier is None:
            raise ValueError(
                f"{name} has no nn.Linear and its output has no 'embedding'; "
                "pass classifier=<its final layer> to EmbeddingAdapter"
            )
        if self._captured is None or self._captured_out is None:
            raise ValueError(
                f"the classifier layer chosen for {name} did not run in forward; "
                "pass classifier=<name of the layer that produces the logits>"
            )
        if self._captured_out.shape != logits.shape:
            raise ValueError(
                f"the classifier layer chosen for {name} outputs shape "
                f"{tuple(self._captured_out.shape)} but the model returns logits of shape "
                f"{tuple(logits.shape)}; pass classifier=<name of the final linear layer>"
            )
        if self._captured.dim() != 2:
            raise ValueError(
                f"the input of the classifier of {name} has shape "
                f"{tuple(self._captured.shape)}; an embedding must be [B, D]"
            )
        return self._captured


def with_embedding(model: nn.Module, classifier: nn.Module | str | None = None) -> EmbeddingAdapter:
    """Return ``model`` wrapped by :class:`EmbeddingAdapter` (unless it already is one)."""
    if isinstance(model, EmbeddingAdapter):
        return model
    return EmbeddingAdapter(model, classifier)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside an :class:`EmbeddingAdapter` (or ``model`` itself)."""
    return model.model if isinstance(model, EmbeddingAdapter) else model


def final_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The final linear classifier of ``model`` and its name in ``model.named_modules()``.

    The layer an :class:`EmbeddingAdapter` captures (named under ``"model."``), else the
    layer ``model.get_classifier()`` returns (ndkd and timm models), else the last
    ``nn.Linear`` that ``model`` registers.

    Raises:
        ValueError: there is no such ``nn.Linear``.
    """
    if isinstance(model, EmbeddingAdapter):
        chosen = model.classifier
    else:
        getter = getattr(model, "get_classifier", None)
        chosen = getter() if callable(getter) else None
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (chosen is None or module is chosen)
    ]
    if not found:
        detail = "" if chosen is None else f" (its classifier is a {type(chosen).__name__})"
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier{detail}")
    return found[-1]


def _resolve_classifier(model: nn.Module, classifier: nn.Module | str | None) -> nn.Module | None:
    if isinstance(classifier, nn.Module):
        return classifier
    if isinstance(classifier, str):
        modules = dict(model.named_modules())
        if classifier not in modules:
            raise ValueError(f"{type(model).__name__} has no submodule named {classifier!r}")
        return modules[classifier]
    try:
        return final_linear(model)[1]
    except ValueError:
        return None  # then the model's own output must carry the embedding


def _logits_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; "
        "expected a tensor, a tuple whose first item is the logits, a mapping with "
        "'logits', or an object with a 'logits' attribute"
    )
