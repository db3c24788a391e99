"""The audit trail: who ran a run, what plan, each hop's times and outcome, and what was waived.

The audit record lives inside the run's checkpoint (``Checkpoint.audit``), not beside it:
the checkpoint is already the one per-run record every store keeps (a file or a Secret),
written atomically at every state change and scanned for private keys before it is stored,
and ``upgrader history`` already reads every checkpoint while naming the unreadable ones. A
separate record could disagree with the checkpoint after a crash between two writes; this
one cannot.

Everything here is pure. The executor hands each state change over as a ``Transition``;
``follow`` returns the record brought up to date and the notification kinds that change
stands for (``run-started``, ``hop-started``, ``hop-done``, ``run-paused``, ...), so the
audit trail and the notifications can never tell two stories. ``actor`` says who runs the
tool from what it is given (environment, the ServiceAccount files), never reading them itself.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from upgrader.states import ACTING, RunState

S = RunState
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


Utc = Annotated[dt.datetime, AfterValidator(_utc)]
Outcome = Literal["running", "done", "paused", "failed", "rolled-back"]


class Actor(BaseModel):
    """Who ran a command: a person (``user@host``) or, in a cluster, a ServiceAccount."""

    kind: Literal["user", "service-account"]
    name: str
    host: str = ""
    namespace: str = ""

    def __str__(self) -> str:
        if self.kind == "service-account":
            return f"system:serviceaccount:{self.namespace}:{self.name}"
        return f"{self.name}@{self.host}" if self.host else self.name


class Invocation(BaseModel):
    """One command that acted on the run (``apply``, ``resume``, ``rollback``)."""

    action: str
    by: Actor
    at: Utc


class HopRecord(BaseModel):
    """A hop as the run lived it: first started, last ended, how it ended."""

    hop: int  # counted from 1, as the messages say
    from_: str = Field(alias="from")
    to: str
    started_at: Utc
    ended_at: Utc | None = None
    outcome: Outcome = "running"

    model_config = {"populate_by_name": True}


class Audit(BaseModel):
    """The run's audit record, kept in its checkpoint."""

    by: Actor  # who started the run
    plan_digest: str
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None
    waivers: list[str] = Field(default_factory=list)
    acknowledged: list[str] = Field(default_factory=list)
    invocations: list[Invocation] = Field(default_factory=list)
    hops: list[HopRecord] = Field(default_factory=list)

    model_config = {"populate_by_name": True}

    def view(self) -> dict[str, Any]:
        """The JSON form ``history -o json`` shows."""
        return self.model_dump(mode="json", by_alias=True)


def begin(
    audit: Audit | None, *, plan: Mapping[str, Any], plan_digest: str, by: Actor, action: str, now: dt.datetime
) -> Audit:
    """The record of a run when a command starts acting on it (a new record for a new run)."""
    if audit is None:
        audit = Audit(
            by=by,
            plan_digest=plan_digest,
            from_=plan.get("from"),
            to=plan.get("to"),
            waivers=[str(w) for w in plan.get("waivers") or []],
            acknowledged=[str(a) for a in plan.get("acknowledged") or []],
        )
    return audit.model_copy(update={"invocations": [*audit.invocations, Invocation(action=action, by=by, at=now)]})


@dataclass(frozen=True)
class Transition:
    """One state change of a run, as the executor made it (``hop`` counted from 0)."""

    run_id: str
    at: dt.datetime
    previous: RunState
    state: RunState
    hop: int
    hop_from: str | None
    hop_to: str | None
    reason: str
    next_command: str | None = None
    resume_at: dt.datetime | None = None  # a paused run: when it can go on (the next window), if known
    rolled_back_hops: tuple[int, ...] = ()  # counted from 0


@dataclass(frozen=True)
class Notice:
    """One notification a state change stands for: its kind and the hop it is about (from 0; -1: none)."""

    kind: str
    hop: int = -1
    hop_from: str | None = None
    hop_to: str | None = None


def follow(audit: Audit | None, change: Transition) -> tuple[Audit | None, list[Notice]]:
    """The record after ``change`` and the notifications it stands for, in order.

    The hop notices need the record to know which hop is open: without one (an executor run outside
    ``upgrader.runs``, which always begins one) only the run-level notices come.
    """
    kinds = _Kinds(change)
    hops = [h.model_copy() for h in audit.hops] if audit else []
    if change.previous == S.PLANNED and change.state in ACTING:
        kinds.append("run-started")
    elif change.previous in (S.PAUSED, S.FAILED) and change.state in ACTING:
        kinds.append("run-resumed")
    if change.state in ACTING:
        _enter_hop(hops, change, kinds)
    elif change.state in _ENDS:
        outcome, kind = _ENDS[change.state]
        for record in hops:
            if change.state in (S.PAUSED, S.FAILED) and record.outcome == "running" and record.hop - 1 < change.hop:
                # stopped before the first step of a later hop (a window's pause): the hops before it are done
                record.ended_at, record.outcome = change.at, "done"
                kinds.append("hop-done", record)
            elif record.outcome == "running" or (
                change.state == S.ROLLED_BACK
                and record.hop - 1 in change.rolled_back_hops
                and record.outcome != "rolled-back"  # an earlier rollback's end stays as it was
            ):
                record.ended_at, record.outcome = change.at, outcome
                if outcome == "done":
                    kinds.append("hop-done", record)
        kinds.append(kind)
    elif change.state == S.ROLLING_BACK:
        kinds.append("rollback-started")
    if audit is None:
        return None, [n for n in kinds.notices if not n.kind.startswith("hop-")]
    return audit.model_copy(update={"hops": hops}), kinds.notices


_ENDS: dict[RunState, tuple[Outcome, str]] = {
    S.DONE: ("done", "run-done"),
    S.PAUSED: ("paused", "run-paused"),
    S.FAILED: ("failed", "run-failed"),
    S.ROLLED_BACK: ("rolled-back", "rolled-back"),
}


def _enter_hop(hops: list[HopRecord], change: Transition, kinds: _Kinds) -> None:
    """A step of hop ``change.hop`` starts: hops left behind are done; the hop is opened (or reopened)."""
    number = change.hop + 1
    for record in hops:  # the executor moves to the next hop only after the last step of this one
        if record.outcome == "running" and record.hop < number:
            record.ended_at, record.outcome = change.at, "done"
            kinds.append("hop-done", record)
    mine = next((h for h in hops if h.hop == number), None)
    if mine is None:
        hops.append(HopRecord(hop=number, from_=change.hop_from or "", to=change.hop_to or "", started_at=change.at))
        kinds.append("hop-started")
    elif mine.outcome != "running":
        mine.outcome, mine.ended_at = "running", None  # resumed: the first start is kept


class _Kinds:
    """The notices of one change: ``append("run-done")`` for the run, ``append("hop-done", record)`` for a hop."""

    def __init__(self, change: Transition) -> None:
        self.change = change
        self.notices: list[Notice] = []

    def append(self, kind: str, record: HopRecord | None = None) -> None:
        if record is not None:
            self.notices.append(Notice(kind, record.hop - 1, record.from_, record.to))
        else:  # a hop starting, or a run-level notice: the hop the run is in
            self.notices.append(Notice(kind, self.change.hop, self.change.hop_from, self.change.hop_to))


# ---- who runs the tool ----------------------------------------------------------------------


def actor(env: Mapping[str, str], read: Callable[[str], str | None], *, user: Callable[[], str], host: str) -> Actor:
    """The ServiceAccount when running in a pod (``KUBERNETES_SERVICE_HOST`` and a mounted token), else
    ``user()@host`` (``user`` is asked only then: a pod's arbitrary UID may have no name). ``read(name)``
    returns a file of the ServiceAccount folder (None when absent); the token is decoded for its
    namespace and name only, never kept."""
    if env.get("KUBERNETES_SERVICE_HOST"):
        token = read("token")
        claims = _claims(token) if token else {}
        bound = claims.get("kubernetes.io")
        if isinstance(bound, dict) and isinstance(bound.get("serviceaccount"), dict):
            namespace, name = bound.get("namespace"), bound["serviceaccount"].get("name")
        else:  # legacy (Secret-based) tokens carry flat claims
            namespace = claims.get("kubernetes.io/serviceaccount/namespace")
            name = claims.get("kubernetes.io/serviceaccount/service-account.name")
        namespace = namespace if isinstance(namespace, str) else (read("namespace") or "").strip()
        if isinstance(name, str) and name:
            return Actor(kind="service-account", name=name, namespace=namespace, host=host)
    return Actor(kind="user", name=user(), host=host)


def _claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (it only names who we are); {} when it is not one."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return {}
    try:
        data = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return {}
    return data if isinstance(data, dict) else {}
