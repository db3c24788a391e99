"""What every command shares: the typer app, global options, option types and output (bars, files)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import structlog
import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.text import Text

from upgrader import __version__, logs
from upgrader.errors import InputError
from upgrader.logs import bounded, markup_safe, printable
from upgrader.spec import Window, window_from_text

app = typer.Typer(
    name="upgrader",
    help="Upgrade and roll back the Linkerd service mesh on Kubernetes, safely and unattended.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = structlog.get_logger("upgrader")


class Output(StrEnum):
    table = "table"
    json = "json"


class LogFormat(StrEnum):
    console = "console"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"upgrader {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    log_format: Annotated[LogFormat, typer.Option(help="console for people, json for automation.")] = (
        LogFormat.console
    ),
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise InputError(f"unknown --log-level {log_level!r}", hint="use debug, info, warning or error")
    logs.configure(log_format.value, log_level)
    OUTPUT["bars"] = log_format is LogFormat.console and sys.stderr.isatty()
    OUTPUT["debug"] = log_level.lower() == "debug"


# progress bars only for people at a terminal (events otherwise); tracebacks only at --log-level debug
OUTPUT = {"bars": False, "debug": False}


# ---- printing: every value we echo back goes through here ------------------------------------


def echo(text: str = "", *, nl: bool = True, err: bool = False) -> None:
    """Print ``text`` for people: control characters shown as escapes (typer.echo reads no markup)."""
    typer.echo(printable(text), nl=nl, err=err)


CELL_LIMIT = 500  # characters of one value in a table cell; JSON output is never cut


def cell(value: object, limit: int = CELL_LIMIT) -> str:
    """A value for a table cell: printable and, past ``limit`` characters, cut with an ellipsis."""
    return bounded(value, limit)


def plain_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A rich console that reads no markup or emoji codes in what it prints and highlights nothing.

    Values from files and the cluster print as they are; not highlighting keeps a very long word
    linear (rich's highlighter is quadratic in it).
    """
    return Console(stderr=stderr, width=width, markup=False, emoji=False, highlight=False)


NOT_A_TERMINAL_WIDTH = 10_000  # pipes and CI logs get whole values, never `linkerd-…`


def stdout_console() -> Console:
    """A plain console for stdout: the terminal's width on a terminal, unbounded (nothing cut) otherwise."""
    console = plain_console()
    if not console.is_terminal:
        console = plain_console(width=NOT_A_TERMINAL_WIDTH)
    return console


def print_error(label: str, message: str, hint: str = "") -> None:
    """``label message`` and ``hint: ...`` on stderr; the label in bold red, the rest plain text."""
    err = plain_console(stderr=True)
    err.print(Text.assemble((label, "bold red"), " ", printable(message)), soft_wrap=True)
    if hint:
        err.print(Text.assemble(("hint:", "bold"), " ", printable(hint)), soft_wrap=True)


class Bars:
    """Rich progress bars on stderr, one per wave (and one for a rollback's restarts)."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(console=console or plain_console(stderr=True), transient=False)
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if what not in self._tasks:
            if not self._tasks:
                self._progress.start()
            self._tasks[what] = self._progress.add_task(markup_safe(what), total=total)  # its column reads markup
        self._progress.update(self._tasks[what], completed=done, total=total)

    def close(self) -> None:
        if self._tasks:
            self._progress.stop()


KubeconfigOpt = Annotated[
    Path | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig of the cluster.")
]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context to use.")]
HelmOpt = Annotated[str, typer.Option("--helm", envvar="UPGRADER_HELM", help="helm binary (helm 4 or 3).")]


ToOpt = Annotated[str | None, typer.Option("--to", help="Target release, e.g. stable-2.14.10.")]
SpecOpt = Annotated[Path | None, typer.Option("--spec", help="Plan spec (see plans/).")]
AckOpt = Annotated[list[str] | None, typer.Option("--ack", help="Acknowledge a blocking upgrade note.")]
RepoOpt = Annotated[str, typer.Option(help="Helm repository name to read versions and charts from.")]


def write_file(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}", hint="pass --out PATH of a writable file") from exc


StateStoreOpt = Annotated[
    str | None,
    typer.Option(
        "--state-store",
        envvar="UPGRADER_STATE_STORE",
        help="file:DIR (default file:$XDG_STATE_HOME/upgrader) or kubernetes:NAMESPACE.",
    ),
]


WindowOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--window",
        help='Maintenance window, repeatable, instead of the spec\'s: "[DAYS] HH:MM-HH:MM [ZONE] [margin=5m]", '
        'e.g. "tue-thu 01:00-05:00 Europe/Berlin".',
    ),
]


def windows_given(texts: list[str] | None) -> list[Window]:
    """The ``--window`` options as windows (bad input names the option)."""
    return [window_from_text(t) for t in texts or []]
