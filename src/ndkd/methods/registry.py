"""Loss terms registered by name; building one checks its parameters."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from ndkd.methods.base import BuildContext, Term

_TERMS: dict[str, type[Term]] = {}
T = TypeVar("T", bound=type[Term])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a :class:`Term` available under ``name``."""

    def add(cls: T) -> T:
        if name in _TERMS:
            raise ValueError(f"loss term {name!r} is registered twice")
        _TERMS[name] = cls
        return cls

    return add


def available() -> list[str]:
    """Names of every registered loss term."""
    return sorted(_TERMS)


def term_parameters(name: str) -> dict[str, Any]:
    """The parameters term ``name`` accepts, with their defaults."""
    signature = inspect.signature(_term_class(name).__init__)
    return {key: p.default for key, p in list(signature.parameters.items())[2:]}


def build_term(name: str, context: BuildContext, params: dict[str, Any]) -> Term:
    """Instantiate term ``name``; an unknown parameter or a bad value is a ``ValueError``."""
    accepted = term_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        shown = ", ".join(accepted) or "none"
        raise ValueError(
            f"loss term {name!r}: unknown parameter {unknown[0]!r} "
            f"(accepted: {shown}, plus weight, warmup_epochs and warmup_from)"
        )
    try:
        return _term_class(name)(context, **params)
    except TypeError as error:
        raise ValueError(f"loss term {name!r}: {error}") from error


def _term_class(name: str) -> type[Term]:
    if name not in _TERMS:
        raise ValueError(f"unknown loss term {name!r}; available: {', '.join(available())}")
    return _TERMS[name]
