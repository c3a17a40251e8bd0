"""The layers of DESIGN.md: imports only point down, and the engine never names a task, a
data set, a model family or a method."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ndkd"

# Lower numbers are lower layers; a module may import its own layer or lower ones.
LAYERS = {
    "progress": 0,
    "collective": 0,
    "checks": 0,
    "atomic": 0,
    "losses": 1,
    "models": 1,
    "data": 1,
    "projector": 1,
    "snapshot": 1,
    "nd_module": 2,
    "centers": 2,
    "methods": 3,
    "tasks": 4,
    "engine": 5,
    "config": 5,
    "experiment": 6,
    "console": 6,
    "analysis": 7,
    "export": 7,
    "demo": 8,
    "sweep": 8,
    "cli": 9,
    "cli_sweep": 9,
    "__main__": 9,
    "__init__": 9,
}


def _unit(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, first component below ndkd)`` of every ndkd import, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "ndkd" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {_unit(path) for path in MODULES}
    assert units <= set(LAYERS), f"add to LAYERS: {sorted(units - set(LAYERS))}"
    assert {"tasks", "engine", "methods", "losses", "data", "models"} <= units


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    unit = _unit(path)
    if unit == "__init__":
        return  # the package's lazy re-exports of the plug-in API
    upward = [
        f"line {line}: ndkd.{target} (layer {LAYERS[target]})"
        for line, target in _imports(path)
        if target in LAYERS and LAYERS[target] > LAYERS[unit]
    ]
    assert not upward, f"{path.name} (layer {LAYERS[unit]}, {unit}) imports upward: {upward}"


def test_engine_names_no_task_dataset_model_family_or_method():
    words = ["cifar", "digits", "imagenet", "resnet", "classification", "top1", '"kd"', '"nd"']
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        code = path.read_text().lower()
        named = [word for word in words if word in code]
        assert not named, f"engine/{path.name} names {named}"


def test_help_does_not_import_torch():
    code = (
        "import sys; from ndkd.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
