"""Notifications: one JSON event per state change of a run, sent to the spec's ``notify.webhookUrl``.

The executor reports each state change as a ``Transition``; ``upgrader.audit.follow`` says
which event kinds it stands for and ``event`` builds each payload. Sending is a ``Notifier``
(the HTTP one is ``upgrader.adapters.webhook.WebhookNotifier``: a background thread with a
bounded queue, a timeout and retries; unit tests use a list). A notifier never blocks the run
and never raises into it.

Payload (``schema`` 1; new fields may be added, existing ones keep their meaning)::

    {"schema": 1, "kind": "hop-done", "run_id": "run-...", "installation": {"namespace": "linkerd",
     "cluster": "https://10.0.0.1:6443"}, "from": "stable-2.13.7", "to": "stable-2.14.10",
     "hop": {"number": 1, "from": "stable-2.13.7", "to": "stable-2.14.10"}, "state": "Preflight",
     "reason": "...", "at": "2026-...+00:00", "next_command": null, "resume_at": null}

Kinds: ``run-started``, ``run-resumed``, ``hop-started``, ``hop-done``, ``run-paused``,
``run-failed``, ``rollback-started``, ``rolled-back``, ``run-done``.

URLs carry credentials (``user:pass@``, a token in the query, or, like Slack's, in the path):
``redacted_url`` (scheme and host only) is the only form stored in a checkpoint or logged.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any, Protocol

from upgrader.audit import Notice, Transition
from upgrader.redaction import REDACTED, redact_text

SCHEMA = 1
KINDS = (
    "run-started",
    "run-resumed",
    "hop-started",
    "hop-done",
    "run-paused",
    "run-failed",
    "rollback-started",
    "rolled-back",
    "run-done",
)


class Notifier(Protocol):
    """Where the events of a run go; ``send`` returns at once and never raises."""

    def send(self, event: dict[str, Any]) -> None: ...


def event(
    kind: str,
    *,
    run_id: str,
    at: dt.datetime,
    state: str,
    reason: str,
    plan_from: str | None,
    plan_to: str | None,
    hop: int,
    hop_from: str | None,
    hop_to: str | None,
    installation: dict[str, str],
    next_command: str | None = None,
    resume_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """One event's payload (``hop`` counted from 0 here, from 1 in the payload)."""
    return {
        "schema": SCHEMA,
        "kind": kind,
        "run_id": run_id,
        "installation": dict(installation),
        "from": plan_from,
        "to": plan_to,
        "hop": {"number": hop + 1, "from": hop_from, "to": hop_to} if hop >= 0 and (hop_from or hop_to) else None,
        "state": state,
        "reason": redact_text(reason),
        "at": at.isoformat(),
        "next_command": next_command if kind in ("run-paused", "run-failed", "rolled-back") else None,
        "resume_at": resume_at.isoformat() if resume_at is not None else None,
    }


def redacted_url(url: str) -> str:
    """``scheme://host[:port]/<redacted>``, always: the only form of a webhook URL stored or logged.

    The whole URL beyond the host is taken for a secret: Slack, Discord and Teams webhooks carry
    their token in the path, others in ``user:pass@``, the query or the fragment.
    """
    base = url_host(url)
    return f"{base}/{REDACTED}" if base != REDACTED else REDACTED


def url_host(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (its credentials, path, query and fragment left out)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}{f':{port}' if port is not None else ''}"


def retry_helps(status: int | None) -> bool:
    """Whether another attempt may succeed: no answer (``None``: refused, reset, timed out), 408, 429 or 5xx."""
    return status is None or status in (408, 429) or status >= 500


def backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt`` (1 = the first retry): 0.5, 1, 2, 4, capped at 8."""
    return float(min(8.0, 0.5 * 2 ** (attempt - 1)))


def events_for(
    change: Transition,
    notices: list[Notice],
    *,
    plan_from: str | None,
    plan_to: str | None,
    installation: dict[str, str],
) -> list[dict[str, Any]]:
    """The payloads of one state change (``notices`` from ``upgrader.audit.follow``), in order."""
    return [
        event(
            notice.kind,
            run_id=change.run_id,
            at=change.at,
            state=str(change.state),
            reason=change.reason,
            plan_from=plan_from,
            plan_to=plan_to,
            hop=notice.hop,
            hop_from=notice.hop_from,
            hop_to=notice.hop_to,
            installation=installation,
            next_command=change.next_command,
            resume_at=change.resume_at,
        )
        for notice in notices
    ]
