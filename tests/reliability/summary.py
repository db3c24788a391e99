"""Print the reliability summary from the JSON-lines log the suites wrote; exit 1 on any failure.

``python -m tests.reliability.summary FILE``. Each line of FILE is one record:
``{"kind": "input"|"fault"|"secret-scan", "case": str, "outcome": str, "detail": str}``, where
``outcome`` is ``handled`` (a bad input), ``survived`` (a fault), ``clean`` (a leak scan) or
``failed``. A missing or empty FILE means nothing was recorded, which is itself a failure.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

KINDS = {
    "input": ("bad inputs tried", "handled"),
    "fault": ("faults injected", "survived"),
    "secret-scan": ("outputs scanned for private keys", "clean"),
}


def summarise(path: Path) -> tuple[list[str], bool]:  # noqa: PLR0912 - one table, read in one pass
    """The summary lines and whether everything recorded was handled, survived or clean."""
    records = []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    bad_lines = 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            bad_lines += 1
            continue
        if isinstance(record, dict) and record.get("kind") in KINDS:
            records.append(record)
        else:
            bad_lines += 1
    ok = bool(records) and bad_lines == 0
    out = [f"reliability summary ({path})"]
    counts = Counter((r["kind"], r.get("outcome") == KINDS[r["kind"]][1]) for r in records)
    for kind, (label, good) in KINDS.items():
        total = counts[(kind, True)] + counts[(kind, False)]
        out.append(f"  {label:<34} {total:>6}   {good}: {counts[(kind, True)]:>6}   failed: {counts[(kind, False)]}")
    problems = Counter()
    for r in records:
        if r.get("outcome") != KINDS[r["kind"]][1]:
            ok = False
            for word in ("traceback", "internal error", "hang", "memory", "exit code", "private-key"):
                if word in str(r.get("detail", "")):
                    problems[word] += 1
    secrets = counts[("secret-scan", False)]
    out.append(
        f"  tracebacks: {problems['traceback']}, internal errors: {problems['internal error']}, "
        f"hangs: {problems['hang']}, memory: {problems['memory']}, wrong exit codes: {problems['exit code']}, "
        f"secrets found: {secrets + problems['private-key']}"
    )
    if bad_lines:
        out.append(f"  {bad_lines} unreadable record(s)")
    if not records:
        out.append("  nothing was recorded: run the suites with UPGRADER_RELIABILITY_LOG set")
    for r in records:
        if r.get("outcome") != KINDS[r["kind"]][1]:
            out.append(f"  FAILED {r['kind']}: {r.get('case', '')[:160]!r}: {r.get('detail', '')[:200]}")
    return out, ok


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.reliability.summary FILE", file=sys.stderr)
        return 2
    lines, ok = summarise(Path(argv[0]))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
