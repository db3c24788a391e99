"""The private-key guard for the reliability suite: every test's output and files are scanned.

What upgrader printed (``harness.run_inprocess``/``run_subprocess`` keep it in
``e2e.harness.leaks.OUTPUTS``), what pytest captured, and every file under the test's
``tmp_path`` (plans, checkpoints, state stores) must hold no private-key material; each scan
is recorded for ``make reliability`` as a ``secret-scan`` record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.harness import leaks
from e2e.harness.reliability import record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    leaks.OUTPUTS.clear()
    result = yield
    scanned = len(leaks.OUTPUTS)
    found = [f"output of `upgrader {c}`" for c in leaks.output_leaks()]
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if isinstance(tmp_path, Path):
        found += [f"file {f}" for f in leaks.file_leaks(tmp_path)]
    record("secret-scan", item.nodeid, "failed" if found else "clean", "; ".join(found) or f"{scanned} outputs")
    assert not found, f"private-key material outside its homes: {found}"
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """What pytest captured from the test (stdout, stderr, log records) is scanned too."""
    report: pytest.TestReport = yield
    if call.when == "call":
        captured = [(name, text) for name, text in report.sections if leaks.leaks_in(text)]
        if captured:
            record("secret-scan", f"{item.nodeid} (captured)", "failed", ", ".join(n for n, _ in captured))
            report.outcome = "failed"
            report.longrepr = f"private-key material in captured output: {[n for n, _ in captured]}"
    return report
