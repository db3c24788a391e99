"""The `upgrader` command line.

Exit codes: 0 done, 1 failed, 2 bad input, 3 refused, 4 preflight errors. Errors are
printed as one message and a hint, never as a traceback (``--log-level debug`` adds it).
"""

from __future__ import annotations

import json
import shutil
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import structlog
import typer
from rich.console import Console
from rich.table import Table

from upgrader import __version__, logs
from upgrader.discovery import Installation, observe
from upgrader.errors import EXIT_FAILED, InputError, UpgraderError

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


KubeconfigOpt = Annotated[
    Path | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig of the cluster.")
]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context to use.")]
HelmOpt = Annotated[str, typer.Option("--helm", envvar="UPGRADER_HELM", help="helm binary (helm 4 or 3).")]


def _helm_binary(helm: str) -> str:
    found = shutil.which(helm)
    if not found:
        raise InputError(f"helm binary {helm!r} not found", hint="install helm >= 3.14 or pass --helm PATH")
    return found


@app.command()
def discover(
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
    output: Annotated[Output, typer.Option("-o", "--output", help="table or json.")] = Output.table,
) -> None:
    """Show the Linkerd installed in the cluster: Helm releases, control plane, proxies."""
    from upgrader.adapters.helm import HelmAdapter  # noqa: PLC0415 - keep --help fast
    from upgrader.adapters.kube import KubeAdapter  # noqa: PLC0415

    if kubeconfig is not None and not kubeconfig.is_file():
        raise InputError(f"kubeconfig {kubeconfig} does not exist", hint="pass --kubeconfig PATH of a cluster")
    helm_port = HelmAdapter(executable=_helm_binary(helm), kubeconfig=kubeconfig, context=context)
    kube = KubeAdapter(kubeconfig=kubeconfig, context=context)
    found = observe(kube, helm_port)
    log.info(
        "discovered",
        found=found.found,
        control_plane_version=found.control_plane_version,
        releases=len(found.releases),
        meshed_namespaces=len(found.proxies),
    )
    if output is Output.json:
        typer.echo(json.dumps(found.as_dict(), indent=2))
    else:
        _print_installation(found)


def _print_installation(inst: Installation) -> None:
    console = Console()
    console.print(f"Kubernetes {inst.kubernetes_version}")
    if not inst.found:
        console.print("No Linkerd installation found (no Linkerd Helm release, linkerd-config or meshed pod).")
        return
    cp = inst.control_plane_version or "not found"
    console.print(
        f"Control plane: {cp} in namespace {inst.control_plane_namespace or '-'}"
        f"{' (HA)' if inst.high_availability else ''}"
    )
    releases = Table(
        "release", "namespace", "chart", "version", "app version", "revision", "status", title="Helm releases"
    )
    for r in inst.releases:
        releases.add_row(r.name, r.namespace, r.chart_name, r.chart_version, r.app_version, str(r.revision), r.status)
    console.print(releases)
    proxies = Table("namespace", "proxy version", "pods", title="Data plane")
    for ns, versions in inst.proxies.items():
        for v, n in versions.items():
            proxies.add_row(ns, v, str(n))
    console.print(proxies)


def _fail(exc: UpgraderError) -> NoReturn:
    err = Console(stderr=True)
    err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[bold]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
    raise SystemExit(exc.exit_code)


def main() -> None:
    """Console-script entry point: usage errors exit 2 (typer), our errors exit with their code."""
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
