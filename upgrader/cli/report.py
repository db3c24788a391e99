"""Commands that report on runs: `status`, `history`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from upgrader.cli.common import (
    ContextOpt,
    HelmOpt,
    KubeconfigOpt,
    Output,
    StateStoreOpt,
    app,
)
from upgrader.runs import (
    live_status,
    live_view,
    load_run,
    lock_status,
    release_line,
    store_for,
)


@app.command()
def status(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    run: Annotated[str | None, typer.Argument(help="Run id (default: the latest run).")] = None,
    output: Annotated[Output, typer.Option("-o", "--output", help="table or json.")] = Output.table,
    state_store: StateStoreOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
) -> None:
    """Where a run is: state, hop, what it changed (and what helm says now), errors, and what to run next."""
    store = store_for(state_store, kubeconfig, context)
    cp = load_run(store, run)
    latest = run is None or store.runs()[-1].run_id == cp.run_id
    histories, unreachable = live_status(cp, latest, kubeconfig, context, helm)
    if output is Output.json:
        data = json.loads(cp.model_dump_json())
        data["live"] = {name: live_view(histories.get(name)) for name in cp.releases}  # None: not checked
        data["live_unchecked"] = unreachable
        typer.echo(json.dumps(data, indent=2))
        return
    hops = cp.plan.get("hops", [])
    typer.echo(
        f"run {cp.run_id}: {cp.state}{f' (stopped in {cp.stopped_in})' if cp.stopped_in else ''}; "
        f"hop {min(cp.hop + 1, len(hops))}/{len(hops)} {cp.plan.get('from')} -> {cp.plan.get('to')}"
    )
    for name, rel in cp.releases.items():
        typer.echo(f"  {rel.namespace}/{name}: {release_line(rel, histories.get(name))}")
    if unreachable:
        typer.echo(f"  helm: releases not checked live ({unreachable})")
    typer.echo(f"  workloads restarted: {len(cp.restarted)}; values changes: {len(cp.values_diff)}")
    for line in waves_passed(hops, cp.waves_done):
        typer.echo(f"  {line}")
    for item in cp.pinned:
        typer.echo(f"  pinned: {item}")
    for item in cp.reported:
        typer.echo(f"  not restarted: {item}")
    for error in cp.errors:
        typer.echo(f"  error: {error}")
    if cp.marks:
        typer.echo("  checkpoints (upgrader rollback --to-checkpoint ID):")
    for mark in cp.marks:
        revisions = ", ".join(f"{n} r{r}" for n, r in mark.revisions.items()) or "no release touched yet"
        typer.echo(
            f"    {mark.id:>3}  {mark.at:%Y-%m-%d %H:%M:%S}  hop {mark.hop + 1} {mark.state}: {revisions}; "
            f"{mark.restarted} restarted"
        )
    if cp.state == "RolledBack" and cp.next_command:
        typer.echo(f"next: {cp.next_command}")
    if cp.state not in ("Done", "RolledBack"):
        typer.echo(f"  lock: {lock_status(cp, kubeconfig, context)}")
        typer.echo(f"next: {cp.next_command or f'upgrader resume {cp.run_id}'}  (or upgrader rollback {cp.run_id})")


def waves_passed(hops: list[dict[str, Any]], done: list[str]) -> list[str]:
    """Per hop, the waves that passed by name (``done`` holds internal ``<hop>/<wave>`` tags)."""
    lines = []
    for index, hop in enumerate(hops):
        waves = hop.get("waves") or []
        names = [
            f"{w.get('name')}{'' if w.get('namespaces') else ' (nothing to restart)'}"
            for number, w in enumerate(waves)
            if f"{index}/{number}" in done
        ]
        if names:
            lines.append(
                f"hop {index + 1} ({hop.get('from')} -> {hop.get('to')}): waves passed: "
                f"{', '.join(names)} ({len(names)} of {len(waves)})"
            )
    return lines


@app.command()
def history(
    output: Annotated[Output, typer.Option("-o", "--output", help="table or json.")] = Output.table,
    state_store: StateStoreOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Every run in the state store, oldest first."""
    store = store_for(state_store, kubeconfig, context)
    runs = store.runs()
    if output is Output.json:
        typer.echo(
            json.dumps(
                [
                    {
                        "run_id": c.run_id,
                        "state": c.state,
                        "from": c.plan.get("from"),
                        "to": c.plan.get("to"),
                        "started_at": c.started_at.isoformat(),
                        "updated_at": c.updated_at.isoformat(),
                    }
                    for c in runs
                ],
                indent=2,
            )
        )
        return
    table = Table("run", "state", "from", "to", "started", "updated", title="upgrader runs", min_width=110)
    for c in runs:
        table.add_row(
            c.run_id,
            str(c.state),
            str(c.plan.get("from")),
            str(c.plan.get("to")),
            c.started_at.strftime("%Y-%m-%d %H:%M"),
            c.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)
