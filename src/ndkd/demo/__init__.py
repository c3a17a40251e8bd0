"""``ndkd demo``: the whole pipeline on bundled real data (scikit-learn's digits), on a CPU:
ND (``pipeline``) for single-label classification, LSHFM (``multilabel``) for multi-label,
ND on Faster R-CNN (``detection``) for detection."""

from ndkd.demo.detection import (
    DETECTION,
    QUICK_DETECTION,
    DetectionSettings,
    detection_table,
    run_detection_demo,
    write_detection_report,
)
from ndkd.demo.multilabel import (
    MULTILABEL,
    QUICK_MULTILABEL,
    multilabel_table,
    run_multilabel_demo,
    write_multilabel_report,
)
from ndkd.demo.pipeline import (
    METHODS,
    QUICK,
    DemoResult,
    DemoSettings,
    HistoryResult,
    run_demo,
)
from ndkd.demo.report import results_table, write_report

__all__ = [
    "DETECTION",
    "METHODS",
    "MULTILABEL",
    "QUICK",
    "QUICK_DETECTION",
    "QUICK_MULTILABEL",
    "DemoResult",
    "DemoSettings",
    "DetectionSettings",
    "HistoryResult",
    "detection_table",
    "multilabel_table",
    "results_table",
    "run_demo",
    "run_detection_demo",
    "run_multilabel_demo",
    "write_detection_report",
    "write_multilabel_report",
    "write_report",
]
