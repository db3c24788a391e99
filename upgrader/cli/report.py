"""Commands that report on runs: `status`, `history`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from upgrader.cli.common import (
    ContextOpt,
    KubeconfigOpt,
    Output,
    StateStoreOpt,
    app,
)
from upgrader.runs import load_run, lock_status, store_for


@app.command()
def status(
    run: Annotated[str | None, typer.Argument(help="Run id (default: the latest run).")] = None,
    output: Annotated[Output, typer.Option("-o", "--output", help="table or json.")] = Output.table,
    state_store: StateStoreOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Where a run is: state, hop, what it changed, errors, and what to run next."""
    store = store_for(state_store, kubeconfig, context)
    cp = load_run(store, run)
    if output is Output.json:
        typer.echo(cp.model_dump_json(indent=2))
        return
    hops = cp.plan.get("hops", [])
    typer.echo(
        f"run {cp.run_id}: {cp.state}{f' (stopped in {cp.stopped_in})' if cp.stopped_in else ''}; "
        f"hop {min(cp.hop + 1, len(hops))}/{len(hops)} {cp.plan.get('from')} -> {cp.plan.get('to')}"
    )
    for name, rel in cp.releases.items():
        typer.echo(f"  {rel.namespace}/{name}: revision {rel.before} -> {rel.after or 'unchanged'}")
    typer.echo(f"  workloads restarted: {len(cp.restarted)}; values changes: {len(cp.values_diff)}")
    if cp.waves_done:
        typer.echo(f"  waves passed: {', '.join(cp.waves_done)}")
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
    if cp.state not in ("Done", "RolledBack"):
        typer.echo(f"  lock: {lock_status(cp, kubeconfig, context)}")
        typer.echo(f"next: {cp.next_command or f'upgrader resume {cp.run_id}'}  (or upgrader rollback {cp.run_id})")


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
