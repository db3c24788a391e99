"""The `upgrader` command line.

Exit codes: 0 done, 1 failed, 2 bad input, 3 refused, 4 preflight errors. Errors are
printed as one message and a hint, never as a traceback (``--log-level debug`` adds it).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import structlog
import typer
from rich.console import Console
from rich.table import Table

from upgrader import __version__, logs
from upgrader.catalog import Catalog, default_catalog
from upgrader.discovery import Installation, observe
from upgrader.errors import EXIT_FAILED, EXIT_PREFLIGHT, EXIT_REFUSED, InputError, UpgraderError
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.rendering import render, render_checks
from upgrader.spec import Spec, deep_merge, load_spec

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


@dataclass
class _Session:
    """What plan and preflight share: the adapters, the catalog, the spec, the plan."""

    spec: Spec
    catalog: Catalog
    plan: Plan
    kube: Any = None
    helm: Any = None
    namespace: str = "linkerd"


def _plan_session(
    *,
    to: str | None,
    from_: str | None,
    offline: bool,
    spec_file: Path | None,
    ack: list[str] | None,
    repo: str,
    kubeconfig: Path | None,
    context: str | None,
    helm: str,
    impersonate: str | None = None,
    kubernetes: str | None = None,
) -> _Session:
    spec = load_spec(spec_file) if spec_file else Spec()
    target_text = to or spec.target
    if not target_text:
        raise InputError("no target version", hint="pass --to VERSION (or set target: in the spec)")
    if offline != (from_ is not None):
        raise InputError("--from and --offline go together", hint="plan offline with --from VERSION --offline")
    catalog = default_catalog()
    target = catalog.parse(target_text)
    if offline:
        offline_offering, offline_notes = build_offering(catalog, None)
        result = make_plan(
            Observed(control_plane=catalog.parse(from_ or ""), kubernetes=kubernetes),
            target,
            offline_offering,
            catalog,
            spec,
            acks=frozenset(ack or []),
            offering_notes=offline_notes,
        )
        return _Session(spec, catalog, result)
    from upgrader.adapters.helm import HelmAdapter  # noqa: PLC0415 - keep --help fast
    from upgrader.adapters.kube import KubeAdapter  # noqa: PLC0415

    if kubeconfig is not None and not kubeconfig.is_file():
        raise InputError(f"kubeconfig {kubeconfig} does not exist", hint="pass --kubeconfig PATH of a cluster")
    helm_port = HelmAdapter(
        executable=_helm_binary(helm), kubeconfig=kubeconfig, context=context, impersonate=impersonate
    )
    kube = KubeAdapter(kubeconfig=kubeconfig, context=context, impersonate=impersonate)
    notes: list[str] = []
    try:
        inst = observe(kube, helm_port)
    except UpgraderError as exc:
        if exc.retryable:
            raise
        notes.append(f"discovery failed: {exc.message}")
        inst = None
    observed = Observed(control_plane=None)
    if inst is not None:
        observed = Observed(
            control_plane=catalog.parse(inst.control_plane_version) if inst.control_plane_version else None,
            data_plane=inst.proxies,
            kubernetes=inst.kubernetes_version,
            extensions=inst.extensions,
            control_plane_namespace=inst.control_plane_namespace or "linkerd",
        )
        log.info(
            "observed",
            control_plane=str(observed.control_plane),
            install_method=inst.install_method,
            meshed_namespaces=len(inst.proxies),
            kubernetes=inst.kubernetes_version,
        )
    charts = ("linkerd-control-plane", "linkerd-crds", "linkerd-viz")
    try:
        found = {c: helm_port.search_repo(repo, c) for c in charts}
    except UpgraderError as exc:
        notes.append(f"helm repository {repo!r} could not be searched: {exc.message}")
        found = {c: None for c in charts}
    repo_rows = None if found["linkerd-control-plane"] is None else {c: r or [] for c, r in found.items()}
    offering, offering_notes = build_offering(catalog, repo_rows)
    if repo_rows is None:
        notes.append(f"helm repository {repo!r} is not added; chart versions come from the bundled catalog")
    result = make_plan(
        observed, target, offering, catalog, spec, acks=frozenset(ack or []), offering_notes=notes + offering_notes
    )
    return _Session(spec, catalog, result, kube, helm_port, observed.control_plane_namespace)


ToOpt = Annotated[str | None, typer.Option("--to", help="Target release, e.g. stable-2.14.10.")]
SpecOpt = Annotated[Path | None, typer.Option("--spec", help="Plan spec (see plans/).")]
AckOpt = Annotated[list[str] | None, typer.Option("--ack", help="Acknowledge a blocking upgrade note.")]
RepoOpt = Annotated[str, typer.Option(help="Helm repository name to read versions and charts from.")]


@app.command()
def plan(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    to: ToOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="Installed release (with --offline).")] = None,
    offline: Annotated[bool, typer.Option(help="Plan without a cluster or repository (needs --from).")] = False,
    spec_file: SpecOpt = None,
    ack: AckOpt = None,
    output: Annotated[PlanFormat, typer.Option("-o", "--output", help="table, markdown, json or yaml.")] = (
        PlanFormat.table
    ),
    out: Annotated[Path | None, typer.Option("--out", help="Also write the plan to this file.")] = None,
    kubernetes: Annotated[
        str | None, typer.Option("--kubernetes", help="Cluster's Kubernetes version (offline plans).")
    ] = None,
    repo: RepoOpt = "linkerd",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
) -> None:
    """Plan an upgrade (or a one-major rollback) from what is installed to --to, hop by hop."""
    if kubernetes is not None and not offline:
        raise InputError("--kubernetes is for offline plans", hint="live plans read the version from the cluster")
    session = _plan_session(
        kubernetes=kubernetes,
        to=to,
        from_=from_,
        offline=offline,
        spec_file=spec_file,
        ack=ack,
        repo=repo,
        kubeconfig=kubeconfig,
        context=context,
        helm=helm,
    )
    result = session.plan
    text = render(result, output.value)
    if out is not None:
        _write(out, render(result, "json" if out.suffix == ".json" else output.value))
    typer.echo(text, nl=False)
    log.info(
        "planned",
        hops=len(result.hops),
        refused=result.refused.code if result.refused else None,
        estimated_minutes=result.estimated_minutes,
    )
    if result.refused:
        raise typer.Exit(EXIT_REFUSED)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}", hint="pass --out PATH of a writable file") from exc


class CheckFormat(StrEnum):
    table = "table"
    json = "json"


@app.command()
def preflight(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    to: ToOpt = None,
    spec_file: SpecOpt = None,
    ack: AckOpt = None,
    min_cert_days: Annotated[int, typer.Option(help="Certificates must stay valid this many days.", min=0)] = 60,
    output: Annotated[CheckFormat, typer.Option("-o", "--output", help="table or json.")] = CheckFormat.table,
    impersonate: Annotated[str | None, typer.Option("--as", help="Check as this user (impersonation).")] = None,
    repo: RepoOpt = "linkerd",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
) -> None:
    """Check that an upgrade to --to can start: cluster, Helm, control plane, certificates, values, CRDs, HA."""
    from upgrader.preflight.checks import Context, run_checks  # noqa: PLC0415
    from upgrader.preflight.observe import gather  # noqa: PLC0415

    session = _plan_session(
        to=to,
        from_=None,
        offline=False,
        spec_file=spec_file,
        ack=ack,
        repo=repo,
        kubeconfig=kubeconfig,
        context=context,
        helm=helm,
        impersonate=impersonate,
    )
    overrides = session.spec.values.overrides
    snapshot = gather(
        session.kube,
        session.helm,
        session.plan,
        namespace=session.namespace,
        repo=repo,
        values_to_send=lambda user: deep_merge(user, overrides),
    )
    results = run_checks(
        Context(
            snapshot,
            session.plan,
            session.catalog,
            session.spec,
            now=dt.datetime.now(dt.UTC),
            min_cert_days=min_cert_days,
        )
    )
    blocking = [r for r in results if r.result == "error" and not r.waived]
    for r in results:
        if r.result != "passed":
            log.warning("check", id=r.id, result=r.result, waived=r.waived, message=r.message)
    typer.echo(render_checks(results, output.value), nl=False)
    log.info(
        "preflight", checks=len(results), errors=len(blocking), warnings=sum(r.result == "warning" for r in results)
    )
    if blocking:
        raise typer.Exit(EXIT_PREFLIGHT)


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
