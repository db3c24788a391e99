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
from upgrader.errors import EXIT_FAILED, EXIT_REFUSED, InputError, UpgraderError

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


class PlanFormat(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"
    yaml = "yaml"


@app.command()
def plan(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    to: Annotated[str | None, typer.Option("--to", help="Target release, e.g. stable-2.14.10.")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Installed release (with --offline).")] = None,
    offline: Annotated[bool, typer.Option(help="Plan without a cluster or repository (needs --from).")] = False,
    spec_file: Annotated[Path | None, typer.Option("--spec", help="Plan spec (see plans/).")] = None,
    ack: Annotated[list[str] | None, typer.Option("--ack", help="Acknowledge a blocking upgrade note.")] = None,
    output: Annotated[PlanFormat, typer.Option("-o", "--output", help="table, markdown, json or yaml.")] = (
        PlanFormat.table
    ),
    out: Annotated[Path | None, typer.Option("--out", help="Also write the plan to this file.")] = None,
    repo: Annotated[str, typer.Option(help="Helm repository name to read versions from.")] = "linkerd",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
) -> None:
    """Plan an upgrade (or a one-major rollback) from what is installed to --to, hop by hop."""
    from upgrader import catalog as catalog_mod  # noqa: PLC0415
    from upgrader.planning import Observed, build_offering, make_plan  # noqa: PLC0415
    from upgrader.rendering import render  # noqa: PLC0415
    from upgrader.spec import Spec, load_spec  # noqa: PLC0415

    spec = load_spec(spec_file) if spec_file else Spec()
    target_text = to or spec.target
    if not target_text:
        raise InputError("no target version", hint="pass --to VERSION (or set target: in the spec)")
    if offline != (from_ is not None):
        raise InputError("--from and --offline go together", hint="plan offline with --from VERSION --offline")
    catalog = catalog_mod.default_catalog()
    target = catalog.parse(target_text)
    if offline:
        observed = Observed(control_plane=catalog.parse(from_ or ""))
        offering, notes = build_offering(catalog, None)
    else:
        from upgrader.adapters.helm import HelmAdapter  # noqa: PLC0415
        from upgrader.adapters.kube import KubeAdapter  # noqa: PLC0415

        if kubeconfig is not None and not kubeconfig.is_file():
            raise InputError(f"kubeconfig {kubeconfig} does not exist", hint="pass --kubeconfig PATH of a cluster")
        helm_port = HelmAdapter(executable=_helm_binary(helm), kubeconfig=kubeconfig, context=context)
        inst = observe(KubeAdapter(kubeconfig=kubeconfig, context=context), helm_port)
        observed = Observed(
            control_plane=catalog.parse(inst.control_plane_version) if inst.control_plane_version else None,
            data_plane=inst.proxies,
            kubernetes=inst.kubernetes_version,
            extensions=inst.extensions,
            control_plane_namespace=inst.control_plane_namespace or "linkerd",
        )
        charts = ("linkerd-control-plane", "linkerd-crds", "linkerd-viz")
        found = {c: helm_port.search_repo(repo, c) for c in charts}
        repo_rows = None if found["linkerd-control-plane"] is None else {c: r or [] for c, r in found.items()}
        offering, notes = build_offering(catalog, repo_rows)
        if repo_rows is None:
            notes.insert(0, f"helm repository {repo!r} is not added; chart versions come from the bundled catalog")
        log.info(
            "observed",
            control_plane=str(observed.control_plane),
            install_method=inst.install_method,
            meshed_namespaces=len(inst.proxies),
            kubernetes=inst.kubernetes_version,
        )
    result = make_plan(observed, target, offering, catalog, spec, acks=frozenset(ack or []), offering_notes=notes)
    text = render(result, output.value)
    if out is not None:
        out.write_text(render(result, "json" if out.suffix == ".json" else output.value))
    typer.echo(text, nl=False)
    log.info(
        "planned",
        hops=len(result.hops),
        refused=result.refused.code if result.refused else None,
        estimated_minutes=result.estimated_minutes,
    )
    if result.refused:
        raise typer.Exit(EXIT_REFUSED)


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
