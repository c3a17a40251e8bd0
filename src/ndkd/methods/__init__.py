"""Distillation methods as named loss terms, composed with weights and schedules.

"X++" is method X's terms plus ``nd``. Importing this package registers every term.
"""

from ndkd.methods import logit, nd  # noqa: F401  (registers the terms)
from ndkd.methods.base import BuildContext, StepOutputs, Term
from ndkd.methods.distiller import Distiller
from ndkd.methods.registry import available, build_term, register, term_parameters

__all__ = [
    "BuildContext",
    "Distiller",
    "StepOutputs",
    "Term",
    "available",
    "build_term",
    "register",
    "term_parameters",
]
