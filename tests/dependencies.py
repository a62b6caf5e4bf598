"""Test dependencies that may be missing: a skip on a developer's machine, a failure under CI=true.

CI installs everything the suite needs (tests/run-all.sh), so there a missing oracle, model package,
browser or library means the run would silently test less: it fails the test instead.
"""

from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Skip the test for a missing test dependency (what says how to get it); fail it under CI."""
    if in_ci():
        pytest.fail(f"{what} (CI=true: a missing test dependency is a failure)", pytrace=False)
    pytest.skip(what)


def require_module(name: str, how: str = "pip install -e '.[test]'"):
    """The imported module, or missing(...)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{name} is not importable ({exc}): {how}")
