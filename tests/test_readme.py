"""The README's Python example runs as written, on the default model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


from model_files import smollm2_path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = ci.strip().splitlines()[-1]
    assert test_command in text, "README's test command and .ci/run must be the same"
    assert "camelid chat" in text


def test_python_example_runs():
    smollm2_path()
    (block,) = python_blocks()
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 4 and "tokens/s" in lines[-1]
