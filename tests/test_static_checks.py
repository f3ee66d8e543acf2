"""Lint, format and types are part of the one test command, so CI checks them on every change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_lint_and_format_are_clean() -> None:
    lint = run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout
    form = run("ruff", "format", "--check", ".")
    assert form.returncode == 0, form.stdout


@pytest.mark.slow
def test_mypy_is_clean_on_the_package() -> None:
    """Settings in pyproject.toml ([tool.mypy]); type errors in labeller/ fail the suite."""
    result = run("mypy")
    assert result.returncode == 0, result.stdout


def test_test_files_have_unique_names() -> None:
    """pytest (rootdir import mode, no packages) refuses two test modules of one name: the
    second errors at collection, which only the full run shows."""
    seen: dict[str, Path] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name"
        seen[path.name] = path
