"""The installation lock: one acting run per Linkerd installation, held as a Kubernetes Lease.

``decide`` is pure: given the Lease as observed (or None), who we are and the time, it says
whether to take the lock (create, renew or take over) or refuse, naming the holder. A lock
whose holder has not renewed it for longer than its duration is stale; it is taken over
only when the operator asks (``take_over``), never silently, and never while the holder's
process is still running on this host (a stopped or busy run is not a vanished one). The
adapter writes the Lease with the observed resourceVersion, so two runs deciding at once
cannot both win.

Holding the lock is a fence, not a flag. After taking it, a run keeps a ``FencingToken``:
its holder identity and the resourceVersion of its own last write. Every renewal replaces
the Lease with that resourceVersion, so a renewal after someone else wrote it fails (409)
instead of overwriting them; ``check`` reads the Lease and fails when anyone else wrote it
since. A run that lost the lock learns it as ``LockLostError`` and never writes the Lease
again: not renewed, not re-created, not released.

``Heartbeat`` keeps the Lease fresh while the run works. ``tick`` renews when a renewal is
due (every ``interval``, a third of the lease) and is a cheap no-op otherwise; ``fence``
raises ``LockLostError`` unless the lock is still ours (the executor calls it before every
action); ``still_held`` answers from what the heartbeat already knows, with no API call (the
executor asks it before each patch of a batch whose checkpoint save was fenced); ``start``/``stop``
run ``tick`` on a background thread so a long blocking call (``helm upgrade --wait``) does not let
the Lease expire. ``sleep_with_heartbeat`` sleeps in slices that end when a renewal falls due, for
bakes and waits run on the caller's thread.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

import structlog

from upgrader.errors import EXIT_REFUSED, UpgraderError

LEASE_SECONDS = 60
log = structlog.get_logger("upgrader.locking")


def lease_name(control_plane_namespace: str) -> str:
    return f"upgrader-lock-{control_plane_namespace}"


class LockLostError(UpgraderError):
    """Another run took the lock (or the Lease vanished) while this run held it: stop acting; retrying cannot help."""

    exit_code = EXIT_REFUSED


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
class FencingToken:
    """Proof of holding the lock: who we are and the resourceVersion of our own last write of the Lease."""

    holder: str
    resource_version: str
    acquired_at: dt.datetime
    renewed_at: dt.datetime


@dataclass(frozen=True)
class Decision:
    action: Literal["create", "renew", "take-over", "refuse"]
    reason: str


def decide(  # noqa: PLR0911 - one return per decision
    existing: LeaseView | None,
    me: str,
    now: dt.datetime,
    *,
    take_over: bool = False,
    holder_gone: bool = False,
    holder_alive: bool = False,
    own_run_only: bool = False,
) -> Decision:
    """Whether ``me`` may hold the lock now.

    ``holder_gone`` says the caller knows the holder's process no longer exists (same host,
    pid not running): such a lock counts as stale at once, but is still only taken over
    when asked. ``holder_alive`` says the holder's process is running on this host: its
    lock is never taken over, however old its last renewal. ``own_run_only`` (a Job's pod, which
    names its run with ``--run-id``) takes over only a lock held for the same run by an earlier
    attempt: another run's lock is refused however stale, since that run's steps are not ours to finish.
    """
    if existing is None or not existing.holder:
        return Decision("create", "no run holds the lock")
    if existing.holder == me:
        return Decision("renew", "this run holds the lock")
    age = int((now - existing.renewed_at).total_seconds())
    if holder_alive:
        try:
            pid = str(_host_pid(existing.holder)[1])
        except ValueError:
            pid = "PID"
        return Decision(
            "refuse",
            f"{existing.holder} holds the lock and its process (pid {pid}) is still running on this host "
            f"(renewed {age}s ago); wait for it to finish, or stop it (kill {pid}) and then take the lock over "
            "with --take-over-lock",
        )
    stale = holder_gone or now > existing.expires_at()
    if stale and take_over and own_run_only and run_of(existing.holder) != run_of(me):
        return Decision(
            "refuse",
            f"{existing.holder} holds the lock (last renewed {age}s ago) for another run than this one "
            f"({run_of(me)}); a run started with --run-id takes over only its own run's lock: finish or roll "
            f"back run {run_of(existing.holder)} first (upgrader resume/rollback {run_of(existing.holder)})",
        )
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


def run_of(holder: str) -> str:
    """The run id of a holder ``user@host:pid/run`` (the whole text when it has no ``/``)."""
    return holder.rsplit("/", 1)[-1]


def _host_pid(holder: str) -> tuple[str, int]:
    """``(host, pid)`` of a holder ``user@host:pid/run``; ValueError when it has no such shape."""
    try:
        host_pid = holder.split("@", 1)[1].split("/", 1)[0]
        host, pid = host_pid.rsplit(":", 1)
        return host, int(pid)
    except IndexError as exc:
        raise ValueError(holder) from exc


def holder_gone_here(holder: str, hostname: str, alive: Callable[[int], bool]) -> bool:
    """True when ``holder`` (``user@host:pid/run``) ran on ``hostname`` and its pid is not running."""
    try:
        host, pid = _host_pid(holder)
    except ValueError:
        return False
    return host == hostname and not alive(pid)


def holder_alive_here(holder: str, hostname: str, alive: Callable[[int], bool]) -> bool:
    """True when ``holder`` (``user@host:pid/run``) ran on ``hostname`` and its pid is still running."""
    try:
        host, pid = _host_pid(holder)
    except ValueError:
        return False
    return host == hostname and alive(pid)


def lost_error(lease: str, me: str, holder: str | None, detail: str = "") -> LockLostError:
    """The error of a run that no longer holds ``lease``: taken by ``holder``, or gone when ``holder`` is None."""
    run = me.split("/", 1)[1] if "/" in me else "RUN"
    if holder and holder != me:
        message = f"lock lost to {holder}: Lease {lease} was taken over after this run last renewed it"
    elif holder:
        message = f"lock lost: Lease {lease} was changed by someone else after this run last wrote it"
    else:
        message = f"lock lost: Lease {lease} is gone (another run may have taken it over and finished)"
    return LockLostError(
        f"{message}{'; ' + detail if detail else ''}",
        hint=f"this run stopped acting; see who acts with `upgrader status`, and only once no other run is "
        f"acting continue this one with `upgrader resume {run}`",
    )


def lock_summary(view: LeaseView | None, now: dt.datetime) -> str:
    """One line for `upgrader status`: who holds the lock, when it was last renewed, and whether it is stale."""
    if view is None or not view.holder:
        return "free"
    age = int((now - view.renewed_at).total_seconds())
    left = int((view.expires_at() - now).total_seconds())
    state = f"expires in {left}s" if left >= 0 else f"stale: expired {-left}s ago"
    return f"held by {view.holder}, renewed {age}s ago ({state})"


class LockPort(Protocol):
    """What the heartbeat needs from the lock (LeaseLock, or a fake)."""

    def renew(self, now: dt.datetime) -> object:
        """Renew the lock we hold; LockLostError when it is no longer ours."""

    def check(self) -> object:
        """Raise LockLostError unless the lock is still ours as we last wrote it."""


class Heartbeat:
    """Keeps a held lock fresh and tells the run, before it acts, whether it still holds it.

    Create it right after the lock was taken. ``clock`` gives the time the Lease is renewed
    at; ``interval`` is how often it is renewed (a third of the lease, so two renewals can
    fail before it expires); a renewal that fails for a reason other than losing the lock
    (API unreachable) is retried after ``retry`` seconds.
    """

    def __init__(
        self,
        lock: LockPort,
        clock: Callable[[], dt.datetime],
        *,
        interval: float = LEASE_SECONDS / 3,
        lease_seconds: float = LEASE_SECONDS,
        retry: float | None = None,
    ) -> None:
        if not 0 < interval < lease_seconds:
            raise ValueError(f"heartbeat interval {interval}s must be above 0 and below the lease ({lease_seconds}s)")
        self.lock, self.clock = lock, clock
        self.interval, self.lease_seconds = interval, lease_seconds
        self.retry = interval / 4 if retry is None else retry
        self.renewed_at = clock()
        self._due = self.renewed_at + dt.timedelta(seconds=interval)
        self._lost: LockLostError | None = None
        self._ticking = threading.Lock()  # one renewal at a time: two at once would conflict with each other
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> LockLostError | None:
        """Why the lock was lost, once a renewal or a check found out."""
        return self._lost

    def due_in(self) -> float:
        """Seconds until the next renewal is due (0 when it is due now)."""
        return max(0.0, (self._due - self.clock()).total_seconds())

    def tick(self) -> None:
        """Renew the lock if a renewal is due (a cheap no-op otherwise). Never raises: a loss is kept for fence()."""
        with self._ticking:
            now = self.clock()
            if self._lost is not None or now < self._due:
                return
            try:
                self.lock.renew(now)
            except LockLostError as exc:
                self._lost = exc
                log.error("lock-lost", reason=exc.message)
                return
            except Exception as exc:  # any other failure (API unreachable) is retried; fence() refuses once expired
                self._due = now + dt.timedelta(seconds=self.retry)
                log.warning("lock-renew-failed", error=str(exc), retry_in=self.retry)
                return
            self.renewed_at = now
            self._due = now + dt.timedelta(seconds=self.interval)
            log.debug("lock-renewed", at=now.isoformat())

    def still_held(self) -> bool:
        """Whether the lock is ours as far as this process knows, asking no one: not lost, renewed within the lease.

        A cheap local check for a burst of actions after one fence() (the patches of a batch of restarts);
        when it says False, call fence() to raise the loss (or to renew, if the API is back and nobody took it).
        """
        return self._lost is None and (self.clock() - self.renewed_at).total_seconds() <= self.lease_seconds

    def fence(self) -> None:
        """Raise LockLostError unless this run still holds the lock: call before every action."""
        self.tick()  # a run woken after a long pause learns here, from the renewal, who took the lock
        if self._lost is not None:
            raise self._lost
        silent = (self.clock() - self.renewed_at).total_seconds()
        if silent > self.lease_seconds:
            self._lost = LockLostError(
                f"lock expired: this run could not renew it for {int(silent)}s (the lease lasts "
                f"{int(self.lease_seconds)}s), so another run may have taken it over",
                hint="check that the Kubernetes API answers and who acts with `upgrader status`, then resume this run",
            )
            raise self._lost
        try:
            self.lock.check()
        except LockLostError as exc:
            self._lost = exc
            raise

    def start(self, wait: Callable[[float], bool] | None = None) -> Heartbeat:
        """Tick on a background thread; ``wait(seconds)`` sleeps and returns True to stop (default: stop() wakes it)."""
        if self._thread is not None:
            raise RuntimeError("the heartbeat is already running")
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._beat, args=(wait or self._stopping.wait,), name="upgrader-lock-heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the background thread (before releasing the lock) and wait for a renewal in flight."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _beat(self, wait: Callable[[float], bool]) -> None:
        while not self._stopping.is_set() and self._lost is None:
            self.tick()
            if self._lost is not None or wait(self.due_in()):
                return


def sleep_with_heartbeat(seconds: float, sleep: Callable[[float], None], heartbeat: Heartbeat) -> None:
    """Sleep ``seconds`` in slices that end when a renewal falls due, renewing between them.

    Raises the remembered LockLostError as soon as a renewal finds the lock lost.
    """
    left = float(seconds)
    while True:
        heartbeat.tick()
        if heartbeat.lost is not None:
            raise heartbeat.lost
        if left <= 0:
            return
        step = min(left, heartbeat.due_in()) or min(left, heartbeat.interval)
        sleep(step)
        left -= step


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
