"""The reliability log: one JSON line per bad input tried, fault injected or output scanned for keys.

Written only when ``UPGRADER_RELIABILITY_LOG`` names a file (``make test`` and
``make reliability`` set it); ``python -m tests.reliability.summary FILE`` prints the summary.
A record is ``{"kind": "input"|"fault"|"secret-scan", "case": str, "outcome": str, "detail": str}``
with ``outcome`` ``handled`` (input), ``survived`` (fault), ``clean`` (scan) or ``failed``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LOG_ENV = "UPGRADER_RELIABILITY_LOG"


def record(kind: str, case: str, outcome: str, detail: str = "") -> None:
    """Append one record (nothing when UPGRADER_RELIABILITY_LOG is unset)."""
    target = os.environ.get(LOG_ENV)
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"kind": kind, "case": case[:300], "outcome": outcome, "detail": detail[:500]})
    with path.open("a", encoding="utf-8") as fh:  # one short write per line: appends from xdist workers stay whole
        fh.write(line + "\n")
