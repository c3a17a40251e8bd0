"""Project hygiene that CI cannot otherwise see: README commands in .ci/run, lint, the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", setup, flags=re.S)


def test_ci_runs_the_readme_commands_verbatim():
    commands = readme_setup_commands()
    assert len(commands) == 2, "README's Set-up section must hold exactly two commands"
    ci_lines = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    install, test = commands
    assert "pip install -e" in install and "pytest" in test
    assert ci_lines.index(install) < ci_lines.index(test)


def test_readme_plugin_example_runs():
    text = (ROOT / "README.md").read_text()
    example = text.split("## Plug-in use", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)\n```", example, flags=re.S)[0]
    namespace: dict = {}
    exec(compile(code, "README plug-in example", "exec"), namespace)
    assert namespace["loss"].isfinite()


def test_ruff_lint_is_clean():
    ruff = Path(sys.executable).parent / "ruff"  # installed by the [dev] extra
    result = subprocess.run(
        [str(ruff), "check", "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_python_dash_m_and_console_script(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ndkd", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("ndkd ")
    missing = subprocess.run(
        [sys.executable, "-m", "ndkd", "inspect-centers", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "not found" in missing.stderr and "Traceback" not in missing.stderr
