"""Preflight: checks that refuse an upgrade likely to fail, and say why and what to do.

Every check is a pure function of observed state returning ``CheckResult``s: an ``id``
(stable, waivable in a spec), a ``category``, a ``severity`` (``error`` blocks, ``warning``
does not), a ``result`` (``passed``, ``warning`` or ``error``), a message naming the object
and a hint naming the fix. ``upgrader.preflight.checks`` holds the checks and
``run_checks`` the order; adapters only gather the ``PreflightSnapshot``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Severity = Literal["error", "warning"]
Result = Literal["passed", "warning", "error"]


class CheckResult(BaseModel):
    """One check's outcome, as `-o json` shows it."""

    model_config = ConfigDict(frozen=True)

    id: str
    category: str
    severity: Severity
    result: Result
    message: str
    hint: str = ""
    waived: bool = False


def passed(id: str, category: str, message: str, severity: Severity = "error") -> CheckResult:
    return CheckResult(id=id, category=category, severity=severity, result="passed", message=message)


def failed(id: str, category: str, message: str, hint: str, severity: Severity = "error") -> CheckResult:
    return CheckResult(id=id, category=category, severity=severity, result=severity, message=message, hint=hint)
