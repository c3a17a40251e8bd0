"""Distillation methods as named loss terms, composed with weights and schedules.

"X++" is method X's terms plus ``nd``. Importing this package imports every module in it,
which registers every term (a new method is one new file here).
"""

import importlib
import pkgutil

from ndkd.methods.base import BuildContext, FeatureSelector, StepOutputs, Term
from ndkd.methods.distiller import Distiller
from ndkd.methods.registry import available, build_term, register, term_parameters

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BuildContext",
    "Distiller",
    "FeatureSelector",
    "StepOutputs",
    "Term",
    "available",
    "build_term",
    "register",
    "term_parameters",
]
