"""Plans as people and machines read them: JSON/YAML (stable contract), markdown for pull
requests, rich tables for terminals. Plans never hold secrets (values are referred to by
strategy and key names only), so nothing here needs redaction beyond what planning did."""

from __future__ import annotations

import io
import json
import math
from typing import Any, Literal

import yaml
from rich.console import Console
from rich.table import Table

from upgrader.inputs import json_digest
from upgrader.logs import bounded
from upgrader.planning import Plan
from upgrader.preflight import CheckResult
from upgrader.states import mermaid
from upgrader.windows import duration_text

Format = Literal["table", "markdown", "json", "yaml"]


def plan_document(plan: Plan) -> dict[str, Any]:
    """The plan's JSON contract plus ``digest``: sha256 of the rest, so ``apply --plan`` can tell an edited plan."""
    data = plan.as_json()
    return {**data, "digest": f"sha256:{json_digest(data)}"}


def render(plan: Plan, fmt: Format) -> str:
    """``plan`` in ``fmt``, ending with a newline."""
    if fmt == "json":
        return json.dumps(plan_document(plan), indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(plan_document(plan), sort_keys=False)
    if fmt == "markdown":
        return _markdown(plan)
    return _table(plan)


def _summary(plan: Plan) -> str:
    if plan.refused:
        return f"REFUSED ({plan.refused.code}): {plan.refused.reason}"
    if not plan.hops:
        return "Nothing to do."
    path = " -> ".join([plan.from_ or "?", *(h.to for h in plan.hops)])
    return f"{len(plan.hops)} hop(s): {path}; estimated {plan.estimated_minutes} min"


def _window_lines(plan: Plan) -> list[str]:
    """The maintenance windows and whether the run fits in one (empty without windows)."""
    if not plan.windows:
        return []
    lines = [f"maintenance window: {w}" for w in plan.windows]
    fit = plan.window_fit
    if fit is not None:
        margin = f" (each step with a {duration_text(fit.margin_seconds)} margin)"
        lines.append(
            f"fits in one window{margin}"
            if fit.fits_one_window
            else f"does not fit in one window{margin}: {fit.first_of_next_window} would be the first step of the next"
        )
    return lines


def _minutes(seconds: int) -> str:
    return f"~{math.ceil(seconds / 60)} min" if seconds >= 60 else f"~{seconds} s"


def _high_availability(plan: Plan) -> str | None:
    """One line on whether the installation is HA and on what evidence (None when not observed)."""
    if plan.high_availability is None:
        return None
    evidence = f" ({'; '.join(plan.high_availability_evidence)})" if plan.high_availability_evidence else ""
    return f"control plane installed HA: {'yes' if plan.high_availability else 'no'}{evidence}"


def _markdown(plan: Plan) -> str:
    out = [f"# Linkerd upgrade plan: {plan.from_ or 'unknown'} -> {plan.to}", "", f"**{_summary(plan)}**", ""]
    out += [f"- spec: `{plan.spec}`; values strategy: `{plan.values_strategy}`"]
    if (ha := _high_availability(plan)) is not None:
        out.append(f"- {ha}")
    if plan.acknowledged:
        out.append(f"- acknowledged notes: {', '.join(f'`{a}`' for a in plan.acknowledged)}")
    if plan.waivers:
        out.append(f"- waived preflight checks: {', '.join(f'`{w}`' for w in plan.waivers)}")
    out += [f"- note: {n}" for n in plan.notes]
    out += [f"- **warning**: {w}" for w in plan.warnings]
    out += [f"- **pinned**: {p}" for p in plan.pins]
    out.append(f"- on failure: `{plan.on_failure}`{'; dry run (server-side only)' if plan.dry_run else ''}")
    out += [f"- {line}" for line in _window_lines(plan)]
    if plan.gates:
        out.append("- gates: " + ", ".join(f"{k}={v}" for k, v in plan.gates.items()))
    if plan.values_overrides:
        out += [
            "",
            "Value overrides from the spec (secrets redacted):",
            "",
            "```yaml",
            yaml.safe_dump(plan.values_overrides, sort_keys=True).rstrip(),
            "```",
        ]
    for i, hop in enumerate(plan.hops, 1):
        out += [
            "",
            f"## Hop {i}: {hop.from_} -> {hop.to} ({hop.kind}, Linkerd {hop.major}, ~{hop.estimated_minutes} min)",
            "",
            "| chart | version |",
            "|---|---|",
        ]
        out += [f"| {chart} | {version} |" for chart, version in hop.charts.items()]
        out += ["", "| # | state | step | chart version | estimate | detail |", "|---|---|---|---|---|---|"]
        out += [
            f"| {n} | {s.state} | {s.name} | {s.chart_version or ''} | {_minutes(s.estimated_seconds)} | {s.detail} |"
            for n, s in enumerate(hop.steps, 1)
        ]
        if hop.values_changes:
            out += ["", "Values changes in this major (migrated or refused before the upgrade):"]
            out += [f"- {kind}: `{json.dumps(keys)}`" for kind, keys in hop.values_changes.items()]
        for note in hop.notes:
            flag = " **(blocking; acknowledged)**" if note.get("blocking") else ""
            out.append(f"- upgrade note `{note['id']}`{flag}: {note['text']}")
    if plan.data_plane:
        out += ["", "## Data plane now", "", "| namespace | proxy versions (pods) |", "|---|---|"]
        out += [
            f"| {ns} | {', '.join(f'{v} ({n})' for v, n in versions.items())} |"
            for ns, versions in plan.data_plane.items()
        ]
    out += ["", "<details><summary>Run states</summary>", "", "```mermaid", mermaid(), "```", "", "</details>", ""]
    return "\n".join(out)


def _plain(buffer: io.StringIO, width: int) -> Console:
    """A console that prints names and values as they are: no markup or emoji codes read, nothing
    highlighted (rich's highlighter is quadratic in a very long word). The CLI makes control
    characters visible when it prints the result."""
    return Console(file=buffer, width=width, color_system=None, markup=False, emoji=False, highlight=False)


def _table(plan: Plan) -> str:
    buffer = io.StringIO()
    console = _plain(buffer, 120)
    console.print(f"Plan {plan.from_ or 'unknown'} -> {plan.to} (spec {bounded(plan.spec)}): {_summary(plan)}")
    if (ha := _high_availability(plan)) is not None:
        console.print(ha)
    for line in _window_lines(plan):
        console.print(line)
    for note in plan.notes:
        console.print(f"note: {note}")
    for warning in plan.warnings:
        console.print(f"warning: {warning}")
    for pin in plan.pins:
        console.print(f"pinned: {pin}" + ("" if plan.refused else " (reported as pinned, not upgraded)"))
    for i, hop in enumerate(plan.hops, 1):
        table = Table(
            "#",
            "state",
            "step",
            "chart version",
            "estimate",
            "detail",
            title=f"Hop {i}: {hop.from_} -> {hop.to} ({hop.kind}, ~{hop.estimated_minutes} min)",
        )
        for n, s in enumerate(hop.steps, 1):
            table.add_row(str(n), s.state, s.name, s.chart_version or "", _minutes(s.estimated_seconds), s.detail)
        console.print(table)
        for kind, keys in hop.values_changes.items():
            console.print(f"values {kind} in {hop.major}: {json.dumps(keys)}")
        for hop_note in hop.notes:
            blocking = " (blocking)" if hop_note.get("blocking") else ""
            console.print(f"upgrade note {hop_note['id']}{blocking}: {hop_note['text']}")
    if plan.data_plane:
        dp = Table("namespace", "proxy versions (pods)", title="Data plane now")
        for ns, versions in plan.data_plane.items():
            dp.add_row(ns, ", ".join(f"{v} ({n})" for v, n in versions.items()))
        console.print(dp)
    return buffer.getvalue()


CATEGORY_ORDER = (
    "plan",
    "cluster",
    "install",
    "helm",
    "control-plane",
    "identity",
    "data-plane",
    "values",
    "crds",
    "ha",
    "disruption",
)


def render_checks(results: list[CheckResult], fmt: Literal["table", "json"]) -> str:
    """Preflight results: ``{"success", "checks": [...]}`` or a table grouped by category."""
    success = not any(r.result == "error" and not r.waived for r in results)
    if fmt == "json":
        checks = [
            r.model_dump(include={"id", "category", "severity", "result", "message", "hint", "waived"}) for r in results
        ]
        return json.dumps({"success": success, "checks": checks}, indent=2) + "\n"
    buffer = io.StringIO()
    console = _plain(buffer, 140)
    marks = {"passed": "ok", "warning": "WARN", "error": "ERROR"}
    for category in sorted(
        {r.category for r in results},
        key=lambda c: (c not in CATEGORY_ORDER, CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else 0, c),
    ):
        table = Table("result", "check", "message", "hint", title=category)
        for r in (r for r in results if r.category == category):
            mark = marks[r.result] + (" (waived)" if r.waived else "")
            table.add_row(mark, r.id, r.message, r.hint)
        console.print(table)
    counts = {k: sum(r.result == k and not r.waived for r in results) for k in marks}
    waived = sum(r.waived for r in results)
    console.print(
        f"{'PASSED' if success else 'FAILED'}: {counts['passed']} passed, {counts['warning']} warnings, "
        f"{counts['error']} errors" + (f", {waived} waived" if waived else "")
    )
    return buffer.getvalue()
