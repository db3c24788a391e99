"""The `upgrader` command line.

Exit codes: 0 done, 1 failed, 2 bad input, 3 refused, 4 preflight errors. Errors are
printed as one message and a hint, never as a traceback (``--log-level debug`` adds it).
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

from rich.console import Console

from upgrader.cli import inspection, report, run  # noqa: F401 - importing registers the commands
from upgrader.cli.common import app
from upgrader.errors import EXIT_FAILED, UpgraderError


def _fail(exc: UpgraderError) -> NoReturn:
    err = Console(stderr=True)
    err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[bold]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
    raise SystemExit(exc.exit_code)


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM stops like Ctrl-C: the current step's checkpoint is written and a resume hint printed."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    """Console-script entry point: usage errors exit 2 (typer), our errors exit with their code."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except UpgraderError as exc:
        _fail(exc)
    except Exception as exc:
        if "--log-level" in sys.argv and "debug" in sys.argv:
            raise
        Console(stderr=True).print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\n"
            "hint: rerun with --log-level debug for the traceback and report it",
            highlight=False,
        )
        raise SystemExit(EXIT_FAILED) from None
