"""Run the CLI on one bad input, in-process or in a subprocess, and judge what it did.

A case is *handled* when upgrader exits 0, 2 or 3 (offline nothing else is legitimate: 1 is a
failed run, 4 a failed preflight, and neither can happen without a cluster), prints no
traceback and no "internal error", prints no raw terminal escape sequence (output here is
never a terminal, so any escape came from the input), and stays within a time and memory
bound. Every judged case is recorded as one JSON line when ``UPGRADER_RELIABILITY_LOG`` names
a file (``make reliability`` sets it); ``python -m tests.reliability.summary FILE`` counts them.

The record format is in ``e2e/harness/reliability.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from e2e.harness import leaks
from e2e.harness.reliability import record

ALLOWED_EXITS = frozenset({0, 2, 3})
CASE_SECONDS = 20  # safety limit per in-process case, far above any real run (about 0.03 s)
MEMORY_HEADROOM = 768 * 2**20  # address space a case may add on top of what the test process has
REPO = Path(__file__).resolve().parents[2]
# Never reach a real cluster or the user's state store from a bad-input case.
_SCRUBBED = ("KUBECONFIG", "UPGRADER_STATE_STORE", "UPGRADER_HELM", "XDG_STATE_HOME")


@dataclass(frozen=True)
class Result:
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    note: str = ""  # "hang" or "memory" when a safety limit stopped the case

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def problems(result: Result) -> list[str]:
    """What is wrong with how upgrader answered a bad input (empty: handled)."""
    found = []
    if result.note:
        found.append(result.note)
    elif result.code not in ALLOWED_EXITS:
        found.append(f"exit code {result.code}")
    if "Traceback" in result.output:
        found.append("traceback")
    if "internal error" in result.output:
        found.append("internal error")
    if "\x1b" in result.output or "\x9b" in result.output:
        found.append("raw terminal escape sequence in the output")
    if leaks.leaks_in(result.output):
        found.append("private-key material in the output")
    return found


def judge(case: str, result: Result) -> None:
    """Record the case and fail the test when it was not handled."""
    found = problems(result)
    detail = f"{'; '.join(found)}: {result.stderr.strip()[:300]}" if found else f"exit {result.code}"
    record("input", case, "failed" if found else "handled", detail)
    assert not found, (
        f"{case}: {', '.join(found)} (exit {result.code}, {result.seconds:.1f}s)\n"
        f"stdout: {result.stdout[-1500:]!r}\nstderr: {result.stderr[-3000:]!r}"
    )


class _Hang(BaseException):
    """Raised by the alarm; a BaseException so upgrader's own handlers cannot swallow it."""


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    raise _Hang


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def _bounded(seconds: int) -> Iterator[None]:
    """An alarm after ``seconds`` and an address-space cap a little above the current size."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_inprocess(args: Sequence[str], seconds: int = CASE_SECONDS) -> Result:
    """``upgrader ARGS`` through ``upgrader.cli.main`` in this process, output captured."""
    from upgrader.cli import main  # noqa: PLC0415 - imported late so a broken CLI fails the case, not collection

    out, err = io.StringIO(), io.StringIO()
    argv, term = sys.argv, signal.getsignal(signal.SIGTERM)
    sys.argv = ["upgrader", *args]
    saved_env = {k: os.environ.pop(k) for k in _SCRUBBED if k in os.environ}
    code: int | None = 0
    note = ""
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _bounded(seconds):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) or exc.code is None else 1
        code = 0 if code is None else code
    except _Hang:
        code, note = None, f"hang (over {seconds}s)"
    except MemoryError:
        code, note = None, f"memory (over {MEMORY_HEADROOM // 2**20} MiB more)"
    except Exception as exc:
        code, note = None, f"escaped main(): {type(exc).__name__}: {exc}"
    finally:
        sys.argv = argv
        signal.signal(signal.SIGTERM, term)
        os.environ.update(saved_env)
    leaks.OUTPUTS.append((" ".join(args[:3]), out.getvalue() + err.getvalue()))
    return Result(code, out.getvalue(), err.getvalue(), time.monotonic() - started, note)


def run_subprocess(args: Sequence[str], seconds: int = 60, memory: int = 1536 * 2**20) -> Result:
    """``python -m upgrader ARGS`` with an address-space limit and a timeout (for the nastiest cases)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "upgrader", *args],
            capture_output=True,
            timeout=seconds,
            check=False,
            preexec_fn=limit,
            cwd=REPO,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        err = (exc.stderr or b"").decode(errors="replace")
        return Result(None, out, err, time.monotonic() - started, f"hang (over {seconds}s)")
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    leaks.OUTPUTS.append((" ".join(args[:3]), out + err))
    note = "memory (killed or MemoryError)" if proc.returncode < 0 or "MemoryError" in err else ""
    return Result(proc.returncode, out, err, time.monotonic() - started, note)
