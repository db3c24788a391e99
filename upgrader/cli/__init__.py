"""The `upgrader` command line.

Exit codes: 0 done, 1 failed, 2 bad input, 3 refused, 4 preflight errors. Errors are
printed as one message and a hint, never as a traceback (``--log-level debug`` adds it).
Every value echoed back (versions, paths, names, run ids, error text) is printed as plain
text: rich markup in it is not read and control characters are shown as escapes.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import NoReturn

from upgrader.cli import inspection, report, rollout, run  # noqa: F401 - importing registers the commands
from upgrader.cli.common import OUTPUT, app, print_error
from upgrader.errors import EXIT_FAILED, UpgraderError
from upgrader.logs import printable

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C


def _describe(exc: BaseException) -> str:
    """``Type: message`` of any exception, even one whose ``str`` fails."""
    try:
        text = str(exc)
    except Exception:
        text = "(message unavailable)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _report(label: str, message: str, hint: str) -> None:
    """Print an error; if even that fails (a closed or broken stderr), fall back to a plain write."""
    try:
        print_error(label, message, hint)
    except Exception:
        try:
            sys.stderr.write(f"{label} {printable(message)!r}\n" + (f"hint: {printable(hint)!r}\n" if hint else ""))
            sys.stderr.flush()
        except Exception:  # noqa: S110 - nowhere left to say it; the exit code still does
            pass


def _fail(exc: UpgraderError) -> NoReturn:
    _report("error:", exc.message, exc.hint)
    raise SystemExit(exc.exit_code)


def _stdout_gone() -> NoReturn:
    """The reader of our output went away (``| head``): stop quietly, and do not fail again on exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    raise SystemExit(EXIT_FAILED)


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM stops like Ctrl-C: the current step's checkpoint is written and a resume hint printed."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    """Console-script entry point: usage errors exit 2 (typer), our errors exit with their code.

    Anything else is an internal error: one line naming its type and a hint; the traceback only
    with ``--log-level debug`` (parsed by typer, so ``--log-level=debug`` works and ``--ack debug``
    does not turn it on).
    """
    signal.signal(signal.SIGTERM, _terminate)
    OUTPUT["debug"] = False
    try:
        app()
    except UpgraderError as exc:
        _fail(exc)
    except BrokenPipeError:
        _stdout_gone()
    except KeyboardInterrupt:
        _report("interrupted:", "stopped by Ctrl-C or SIGTERM", "")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if OUTPUT["debug"]:
            raise
        _report(
            "internal error:",
            _describe(exc),
            "rerun with --log-level debug for the traceback and report it",
        )
        raise SystemExit(EXIT_FAILED) from None
