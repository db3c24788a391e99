"""Commands that only look: `discover`, `plan`, `preflight`."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from upgrader.cli.common import (
    AckOpt,
    ContextOpt,
    HelmOpt,
    KubeconfigOpt,
    Output,
    RepoOpt,
    SpecOpt,
    StateStoreOpt,
    ToOpt,
    WindowOpt,
    app,
    cell,
    echo,
    log,
    stdout_console,
    windows_given,
    write_file,
)
from upgrader.discovery import Installation, observe
from upgrader.errors import EXIT_PREFLIGHT, EXIT_REFUSED, InputError
from upgrader.incluster import rbac_rules_document
from upgrader.logs import printable
from upgrader.rendering import render, render_checks
from upgrader.runs import cluster_adapters, plan_session
from upgrader.runs import preflight as run_preflight


@app.command()
def discover(
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
    output: Annotated[Output, typer.Option("-o", "--output", help="table or json.")] = Output.table,
) -> None:
    """Show the Linkerd installed in the cluster: Helm releases, control plane, proxies."""
    kube, helm_port = cluster_adapters(kubeconfig, context, helm)
    found = observe(kube, helm_port)
    log.info(
        "discovered",
        found=found.found,
        control_plane_version=found.control_plane_version,
        high_availability=found.high_availability,
        releases=len(found.releases),
        meshed_namespaces=len(found.proxies),
    )
    if output is Output.json:
        echo(json.dumps(found.as_dict(), indent=2))
    else:
        _print_installation(found)


class PlanFormat(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"
    yaml = "yaml"


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
    window: WindowOpt = None,
    state_store: StateStoreOpt = None,
) -> None:
    """Plan an upgrade (or a one-major rollback) from what is installed to --to, hop by hop."""
    if kubernetes is not None and not offline:
        raise InputError("--kubernetes is for offline plans", hint="live plans read the version from the cluster")
    session = plan_session(
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
        windows_given=windows_given(window),
        state_store=state_store,
    )
    result = session.plan
    text = render(result, output.value)
    if out is not None:
        write_file(out, render(result, "json" if out.suffix == ".json" else output.value))
    echo(text, nl=False)
    log.info(
        "planned",
        hops=len(result.hops),
        refused=result.refused.code if result.refused else None,
        estimated_minutes=result.estimated_minutes,
    )
    if result.refused:
        raise typer.Exit(EXIT_REFUSED)


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
    session = plan_session(
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
    results = run_preflight(session, min_cert_days=min_cert_days, repo=repo)
    blocking = [r for r in results if r.result == "error" and not r.waived]
    for r in results:
        if r.result != "passed":
            log.warning("check", id=r.id, result=r.result, waived=r.waived, message=r.message)
    echo(render_checks(results, output.value), nl=False)
    log.info(
        "preflight", checks=len(results), errors=len(blocking), warnings=sum(r.result == "warning" for r in results)
    )
    if blocking:
        raise typer.Exit(EXIT_PREFLIGHT)


@app.command()
def rbac() -> None:
    """Print the RBAC rules a run needs, per scope (the chart's files/rbac-rules.yaml; the table preflight checks)."""
    echo(rbac_rules_document(), nl=False)


def _print_installation(inst: Installation) -> None:
    console = stdout_console()
    console.print(printable(f"Kubernetes {inst.kubernetes_version}"))
    if not inst.found:
        console.print("No Linkerd installation found (no Linkerd Helm release, linkerd-config or meshed pod).")
        return
    cp = inst.control_plane_version or "not found"
    console.print(
        printable(
            f"Control plane: {cp} in namespace {inst.control_plane_namespace or '-'}"
            f"{' (HA)' if inst.high_availability else ''}"
        ),
    )
    if inst.control_plane_version:
        console.print(
            printable(
                f"High availability: {'yes' if inst.high_availability else 'no'}"
                + (f" ({'; '.join(inst.ha_evidence)})" if inst.ha_evidence else "")
            ),
            soft_wrap=True,
        )
    releases = Table(
        "release", "namespace", "chart", "version", "app version", "revision", "status", title="Helm releases"
    )
    for r in inst.releases:
        row = (r.name, r.namespace, r.chart_name, r.chart_version, r.app_version, r.revision, r.status)
        releases.add_row(*(cell(v) for v in row))
    console.print(releases)
    proxies = Table("namespace", "proxy version", "pods", title="Data plane")
    for ns, versions in inst.proxies.items():
        for v, n in versions.items():
            proxies.add_row(cell(ns), cell(v), cell(n))
    console.print(proxies)
