"""Commands that report on runs: `status`, `history`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from upgrader.checkpoints import Checkpoint
from upgrader.cli.common import (
    ContextOpt,
    HelmOpt,
    KubeconfigOpt,
    Output,
    StateStoreOpt,
    app,
    cell,
    echo,
    stdout_console,
)
from upgrader.runs import (
    history_entry,
    hops_line,
    live_status,
    live_view,
    load_run,
    lock_status,
    release_line,
    store_for,
)
from upgrader.states import RunState


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
        echo(json.dumps(data, indent=2))  # ASCII: escapes every control character
        return
    hops = _dicts(cp.plan.get("hops"))
    echo(
        f"run {cp.run_id}: {cp.state}{f' (stopped in {cp.stopped_in})' if cp.stopped_in else ''}; "
        f"hop {min(cp.hop + 1, len(hops))}/{len(hops)} {cp.plan.get('from')} -> {cp.plan.get('to')}"
    )
    for name, rel in cp.releases.items():
        echo(f"  {rel.namespace}/{name}: {release_line(rel, histories.get(name))}")
    if unreachable:
        echo(f"  helm: releases not checked live ({unreachable})")
    for line in [
        *paused_lines(cp),
        f"workloads restarted: {restarted_count(cp)}; {values_header(cp.values_diffs, len(cp.values_diff))}",
        *values_lines(cp.values_diffs),
        *waves_passed(hops, cp.waves_done),
    ]:
        echo(f"  {line}")
    for item in cp.pinned:
        echo(f"  pinned: {item}")
    for item in cp.reported:
        echo(f"  not restarted: {item}")
    for error in cp.errors:
        echo(f"  error: {error}")
    if cp.marks:
        echo("  checkpoints (upgrader rollback --to-checkpoint ID):")
    for mark in cp.marks:
        revisions = ", ".join(f"{n} r{r}" for n, r in mark.revisions.items()) or "no release touched yet"
        echo(
            f"    {mark.id:>3}  {mark.at:%Y-%m-%d %H:%M:%S}  hop {mark.hop + 1} {mark.state}: {revisions}; "
            f"{len(cp.restarts(upto=mark.restarted))} restarted"
        )
    if cp.state == "RolledBack" and cp.next_command:
        echo(f"next: {cp.next_command}")
    if cp.state not in ("Done", "RolledBack"):
        echo(f"  lock: {lock_status(cp, kubeconfig, context)}")
        echo(f"next: {cp.next_command or f'upgrader resume {cp.run_id}'}  (or upgrader rollback {cp.run_id})")


def restarted_count(cp: Checkpoint) -> str:
    """Distinct workload restarts (per hop); a run stopped while restarting may not have patched its last batch."""
    count = str(len(cp.restarts()))
    stopped = RunState.RESTARTING_DATA_PLANE in (cp.state, cp.stopped_in)
    if cp.state not in (RunState.DONE, RunState.ROLLED_BACK) and stopped and cp.restarted:
        count += " (a batch is recorded before its patches: resume restarts any the stop left unpatched)"
    return count


def values_header(diffs: dict[str, list[dict[str, Any]]], last: int) -> str:
    """The values changes of the whole run, per hop (``last``: the last hop's count, from a checkpoint that
    kept only that one)."""
    if not diffs:
        return f"values changes: {last} (last hop; this checkpoint kept no per-hop diffs)"
    per_hop: dict[str, int] = {}
    for key, rows in diffs.items():
        hop = key.partition("/")[0]
        label = str(int(hop) + 1) if hop.isdigit() else hop
        per_hop[label] = per_hop.get(label, 0) + len(rows)
    ordered = sorted(per_hop.items(), key=lambda kv: (0, int(kv[0])) if kv[0].isdigit() else (1, 0))
    counts = ", ".join(f"hop {hop}: {n}" for hop, n in ordered)
    return f"values changes: {sum(per_hop.values())} over {len(per_hop)} hop(s) ({counts})"


def values_lines(diffs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every hop's values diff (already redacted), hop by hop: a header per hop and chart, a line per key."""

    def order(key: str) -> tuple[int, str]:
        hop, _, chart = key.partition("/")
        return (int(hop) if hop.isdigit() else -1, chart)

    lines = []
    for key in sorted(diffs, key=order):
        hop, _, chart = key.partition("/")
        rows = diffs[key]
        lines.append(f"values of hop {int(hop) + 1 if hop.isdigit() else hop} {chart}: {len(rows)} change(s)")
        lines += [f"  {r.get('key')}: {r.get('old')!r} -> {r.get('new')!r}" for r in rows]
    return lines


def paused_lines(cp: Checkpoint) -> list[str]:
    """Why a paused run stopped and, paused by a window, when the next one opens."""
    if cp.state != "Paused" or not cp.events:
        return []
    until = f" until {cp.resume_after:%Y-%m-%d %H:%M:%S} UTC" if cp.resume_after else ""
    return [f"paused{until}: {cp.events[-1].reason}"]


def _dicts(items: object) -> list[dict[str, Any]]:
    """The objects of a list read from a checkpoint's plan (a hand-edited one may hold anything)."""
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def waves_passed(hops: list[dict[str, Any]], done: list[str]) -> list[str]:
    """Per hop, the waves that passed by name (``done`` holds internal ``<hop>/<wave>`` tags)."""
    lines = []
    for index, hop in enumerate(hops):
        waves = _dicts(hop.get("waves"))
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
    """Every run in the state store, oldest first; a checkpoint it cannot read is named on stderr, not fatal."""
    store = store_for(state_store, kubeconfig, context)
    found = store.survey()
    if output is Output.json:
        echo(json.dumps([history_entry(c) for c in found.runs], indent=2))
    else:
        columns = ("run", "state", "from", "to", "by", "plan", "hops", "started", "updated")
        table = Table(*columns, title="upgrader runs", min_width=110)
        for c in found.runs:
            table.add_row(
                *(
                    cell(v)
                    for v in (
                        c.run_id,
                        c.state,
                        c.plan.get("from"),
                        c.plan.get("to"),
                        str(c.audit.by) if c.audit else "-",
                        c.plan_hash[:12],
                        hops_line(c),
                        f"{c.started_at:%Y-%m-%d %H:%M}",
                        f"{c.updated_at:%Y-%m-%d %H:%M}",
                    )
                )
            )
        stdout_console().print(table)
    for bad in found.unreadable:
        echo(f"warning: cannot read {bad.where}: {bad.problem}", err=True)
    if found.unreadable:
        echo("hint: restore each from a backup, or move it out of the state store", err=True)
