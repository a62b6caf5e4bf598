"""What a test run says at its end, besides pass and fail (a pytest plugin, loaded by conftest.py).

- The oracle's mode (tests/oracle/mode.py): exact or tolerance, and what was relaxed.
- Time by test file, so a slow group is visible in CI's log.
- Lines that tests gave to report() (the server soak test's figures).
- Test files all of whose tests were skipped: under CI=true that fails the run, since a skip
  there may only stand for a single case that cannot apply, never for a missing module.
"""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict

_seconds: dict[str, float] = defaultdict(float)
_outcomes: dict[str, set[str]] = defaultdict(set)
_lines: list[str] = []


def report(line: str) -> None:
    """Print `line` in the run's closing report (a test's own figures; pytest captures print)."""
    _lines.append(line)


def pytest_runtest_logreport(report) -> None:
    path = report.nodeid.split("::")[0]
    _seconds[path] += report.duration
    if report.when == "call" or report.outcome != "passed":
        _outcomes[path].add(report.outcome)


def _whole_files_skipped() -> list[str]:
    return sorted(p for p, outcomes in _outcomes.items() if outcomes == {"skipped"})


def _mode_line() -> str:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama.cpp oracle: not installed (python tests/oracle/install.py)"
    try:
        from oracle.mode import mode

        return "llama.cpp oracle: " + mode().describe()
    except Exception as exc:  # noqa: BLE001 - the report must not hide the run's own result
        return f"llama.cpp oracle: mode unknown ({type(exc).__name__}: {exc})"


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    tr = terminalreporter
    tr.section("camelid test report")
    tr.write_line(_mode_line())
    if os.environ.get("CAMELID_SIMD"):
        tr.write_line(f"camelid forced to CAMELID_SIMD={os.environ['CAMELID_SIMD']}")
    total = sum(_seconds.values())
    tr.write_line(f"time by test file (total {total:.0f} s):")
    for path, seconds in sorted(_seconds.items(), key=lambda kv: -kv[1]):
        tr.write_line(f"  {seconds:7.1f} s  {path}")
    for line in _lines:
        tr.write_line(line)
    skipped = _whole_files_skipped()
    if skipped:
        tr.write_line("test files skipped as a whole: " + ", ".join(skipped), red=True)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _whole_files_skipped() and os.environ.get("CI", "").lower() in ("1", "true", "yes") and exitstatus == 0:
        session.exitstatus = 1
