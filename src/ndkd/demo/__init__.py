"""``ndkd demo``: the whole pipeline on bundled real data (scikit-learn's digits), on a CPU."""

from ndkd.demo.pipeline import METHODS, QUICK, DemoResult, DemoSettings, run_demo
from ndkd.demo.report import results_table, write_report

__all__ = [
    "METHODS",
    "QUICK",
    "DemoResult",
    "DemoSettings",
    "results_table",
    "run_demo",
    "write_report",
]
