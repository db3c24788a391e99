"""The installation lock: one acting run per Linkerd installation, held as a Kubernetes Lease.

``decide`` is pure: given the Lease as observed (or None), who we are and the time, it says
whether to take the lock (create, renew or take over) or refuse, naming the holder. A lock
whose holder has not renewed it for longer than its duration is stale; it is taken over
only when the operator asks (``take_over``), never silently. The adapter writes the Lease
with the observed resourceVersion, so two runs deciding at once cannot both win.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

LEASE_SECONDS = 60


def lease_name(control_plane_namespace: str) -> str:
    return f"upgrader-lock-{control_plane_namespace}"


@dataclass(frozen=True)
class LeaseView:
    """The Lease as observed."""

    holder: str
    renewed_at: dt.datetime
    duration_seconds: int
    resource_version: str = ""

    def expires_at(self) -> dt.datetime:
        return self.renewed_at + dt.timedelta(seconds=self.duration_seconds)


@dataclass(frozen=True)
class Decision:
    action: Literal["create", "renew", "take-over", "refuse"]
    reason: str


def decide(
    existing: LeaseView | None, me: str, now: dt.datetime, *, take_over: bool = False, holder_gone: bool = False
) -> Decision:
    """Whether ``me`` may hold the lock now.

    ``holder_gone`` says the caller knows the holder's process no longer exists (same host,
    pid not running): such a lock counts as stale at once, but is still only taken over
    when asked.
    """
    if existing is None or not existing.holder:
        return Decision("create", "no run holds the lock")
    if existing.holder == me:
        return Decision("renew", "this run holds the lock")
    stale = holder_gone or now > existing.expires_at()
    age = int((now - existing.renewed_at).total_seconds())
    if stale and take_over:
        return Decision("take-over", f"{existing.holder} last renewed the lock {age}s ago (stale); taken over")
    if stale:
        return Decision(
            "refuse",
            f"{existing.holder} holds the lock but last renewed it {age}s ago; if that run is "
            "gone, take the lock over with --take-over-lock",
        )
    return Decision(
        "refuse",
        f"another run holds the lock: {existing.holder} (renewed {age}s ago); wait for it to "
        "finish or check it with upgrader status",
    )


def holder_gone_here(holder: str, hostname: str, alive: Callable[[int], bool]) -> bool:
    """True when ``holder`` (``user@host:pid/run``) ran on ``hostname`` and its pid is not running."""
    try:
        host_pid = holder.split("@", 1)[1].split("/", 1)[0]
        host, pid = host_pid.rsplit(":", 1)
        return host == hostname and not alive(int(pid))
    except (IndexError, ValueError):
        return False
