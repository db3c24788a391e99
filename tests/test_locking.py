"""The lock's decisions and its heartbeat: renewed through long waits, lost locks fence the run, live holders kept."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from dataclasses import dataclass, field

import pytest
from structlog.testing import capture_logs

from upgrader.errors import EXIT_REFUSED, UpgraderError
from upgrader.locking import (
    Heartbeat,
    LeaseView,
    LockLostError,
    decide,
    holder_alive_here,
    lock_summary,
    lost_error,
    sleep_with_heartbeat,
)

T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
ALICE = "alice@vm:123/run-a"
BOB = "bob@laptop:456/run-b"


@dataclass
class Clock:
    """A clock that moves only when told to (or when a fake sleep or wait moves it)."""

    now: dt.datetime = T0

    def __call__(self) -> dt.datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)

    def at(self, seconds: float) -> dt.datetime:
        return T0 + dt.timedelta(seconds=seconds)


@dataclass
class FakeLock:
    """LockPort in memory: records renewals and checks; loses the lock, or fails like an unreachable API, on cue."""

    renewed: list[dt.datetime] = field(default_factory=list)
    checks: int = 0
    taken_by: str | None = None  # another run took the lock
    unreachable: bool = False

    def renew(self, now: dt.datetime) -> None:
        if self.taken_by:
            raise lost_error("linkerd/upgrader-lock-linkerd", ALICE, self.taken_by)
        if self.unreachable:
            raise UpgraderError("cannot renew the lock: the Kubernetes API did not answer")
        self.renewed.append(now)

    def check(self) -> None:
        self.checks += 1
        if self.taken_by:
            raise lost_error("linkerd/upgrader-lock-linkerd", ALICE, self.taken_by)


def _offsets(times: list[dt.datetime]) -> list[float]:
    return [(t - T0).total_seconds() for t in times]


def _join_heartbeat() -> None:
    """Wait for the heartbeat thread to end by itself (its wait asked it to, or it lost the lock)."""
    for thread in threading.enumerate():
        if thread.name == "upgrader-lock-heartbeat":
            thread.join(10)
            assert not thread.is_alive()


def _gaps(start: dt.datetime, times: list[dt.datetime]) -> list[float]:
    moments = [start, *times]
    return [(b - a).total_seconds() for a, b in itertools.pairwise(moments)]


# ---- deciding ----------------------------------------------------------------------------------

LIVE = LeaseView(ALICE, T0 - dt.timedelta(seconds=10), 60, "7")
EXPIRED = LeaseView(ALICE, T0 - dt.timedelta(seconds=300), 60, "7")


@pytest.mark.parametrize(
    ("existing", "take_over", "known", "action", "words"),
    [
        pytest.param(LIVE, True, {"alive"}, "refuse", "kill 123", id="a live holder on this host is never taken over"),
        pytest.param(
            EXPIRED, True, {"alive"}, "refuse", "still running on this host", id="nor when its lease has expired"
        ),
        pytest.param(EXPIRED, False, {"alive"}, "refuse", "pid 123", id="the refusal names the running pid"),
        pytest.param(EXPIRED, False, set(), "refuse", "--take-over-lock", id="an expired lease elsewhere needs asking"),
        pytest.param(EXPIRED, True, set(), "take-over", "stale", id="an expired lease elsewhere is taken when asked"),
        pytest.param(LIVE, True, set(), "refuse", "renewed 10s ago", id="a fresh lease elsewhere is kept"),
        pytest.param(LIVE, True, {"gone"}, "take-over", "stale", id="a holder gone from this host is taken when asked"),
        pytest.param(LIVE, True, {"gone", "alive"}, "refuse", "still running", id="running wins over gone"),
    ],
)
def test_takeover_decisions(existing: LeaseView, take_over: bool, known: set[str], action: str, words: str) -> None:
    """A take-over needs asking and a stale lease, and is refused while the holder runs on this host."""
    decision = decide(
        existing, BOB, T0, take_over=take_over, holder_gone="gone" in known, holder_alive="alive" in known
    )
    assert decision.action == action
    assert words in decision.reason
    if action == "refuse":
        assert ALICE in decision.reason


@pytest.mark.parametrize(
    ("holder", "alive", "expected"),
    [
        ("alice@vm:123/run-1", True, True),
        ("alice@vm:123/run-1", False, False),
        ("alice@other:123/run-1", True, False),
        ("garbage", True, False),
        ("alice@vm:notapid/run-1", True, False),
    ],
    ids=[
        "a running pid on this host",
        "a dead pid on this host",
        "another host is never judged",
        "an unparseable holder",
        "a holder with no pid",
    ],
)
def test_holder_alive_here(holder: str, alive: bool, expected: bool) -> None:
    """Only a holder on this host whose pid is running is known to be alive."""
    assert holder_alive_here(holder, "vm", lambda _pid: alive) is expected


@pytest.mark.parametrize(
    ("view", "summary"),
    [
        (None, "free"),
        (LeaseView("", T0, 60), "free"),
        (LIVE, f"held by {ALICE}, renewed 10s ago (expires in 50s)"),
        (EXPIRED, f"held by {ALICE}, renewed 300s ago (stale: expired 240s ago)"),
    ],
    ids=["no Lease is free", "a released Lease is free", "a fresh Lease", "an expired Lease is stale"],
)
def test_lock_summary(view: LeaseView | None, summary: str) -> None:
    """`upgrader status` shows the holder, the last renewal and whether the lease expired."""
    assert lock_summary(view, T0) == summary


def test_a_lost_lock_error_names_the_taker_and_the_next_command() -> None:
    """The error names the Lease, the run that took it, the exit code of a refusal and how to continue."""
    error = lost_error("linkerd/upgrader-lock-linkerd", ALICE, BOB)
    assert error.message.startswith(f"lock lost to {BOB}: Lease linkerd/upgrader-lock-linkerd")
    assert "upgrader resume run-a" in error.hint
    assert error.exit_code == EXIT_REFUSED
    assert not error.retryable
    assert "is gone" in lost_error("linkerd/upgrader-lock-linkerd", ALICE, None).message


# ---- the heartbeat on the caller's thread ---------------------------------------------------


def test_a_ten_minute_bake_keeps_the_lease_renewed_throughout() -> None:
    """Sleeping 600s in slices renews every 20s: no gap between renewals is longer than the interval."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)
    sleep_with_heartbeat(600, clock.sleep, heartbeat)
    assert clock.now == clock.at(600)
    assert _offsets(lock.renewed) == [float(s) for s in range(20, 601, 20)]
    assert max(_gaps(T0, lock.renewed)) <= heartbeat.interval


def test_a_bake_that_starts_between_renewals_still_renews_on_time() -> None:
    """A bake that starts 15s after the last renewal wakes at 20s to renew, not at 35s."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)
    clock.sleep(15)
    slices: list[float] = []

    def sleep(seconds: float) -> None:
        slices.append(seconds)
        clock.sleep(seconds)

    sleep_with_heartbeat(50, sleep, heartbeat)
    assert slices == [5, 20, 20, 5]
    assert _offsets(lock.renewed) == [20, 40, 60]
    assert max(_gaps(T0, lock.renewed)) <= heartbeat.interval


def test_a_tick_before_a_renewal_is_due_does_nothing() -> None:
    """tick() is cheap: it calls the lock only when a renewal is due."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)
    for _ in range(19):
        clock.sleep(1)
        heartbeat.tick()
    assert lock.renewed == []
    clock.sleep(1)
    heartbeat.tick()
    heartbeat.tick()
    assert _offsets(lock.renewed) == [20]


def test_a_lost_lock_makes_fence_raise_naming_the_new_holder() -> None:
    """A renewal that finds the lock taken is remembered: fence() raises naming the taker; no renewal follows."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)
    heartbeat.fence()
    lock.taken_by = BOB
    clock.sleep(20)
    with capture_logs() as logs:
        heartbeat.tick()
    assert [e["event"] for e in logs] == ["lock-lost"]
    assert isinstance(heartbeat.lost, LockLostError)
    with pytest.raises(LockLostError, match=f"lock lost to {BOB}"):
        heartbeat.fence()
    lock.taken_by = None  # even if the API would now accept a renewal, a lost run never renews again
    clock.sleep(60)
    heartbeat.tick()
    assert lock.renewed == []
    with pytest.raises(LockLostError, match=BOB):
        heartbeat.fence()


def test_fence_checks_the_lease_and_remembers_a_loss_it_finds() -> None:
    """fence() reads the lock between renewals; a takeover it finds stops all later renewals."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)
    heartbeat.fence()
    assert lock.checks == 1
    lock.taken_by = BOB
    with pytest.raises(LockLostError, match=BOB):
        heartbeat.fence()
    lock.taken_by = None
    clock.sleep(20)
    heartbeat.tick()
    assert lock.renewed == []


def test_still_held_answers_from_what_the_heartbeat_knows_without_calling_the_lock() -> None:
    """still_held() makes no renewal and no check: True until a renewal finds a loss or the lease runs out."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20, lease_seconds=60)
    clock.sleep(60)
    assert heartbeat.still_held(), "exactly one lease since the last renewal: still ours"
    clock.sleep(1)
    assert not heartbeat.still_held(), "not renewed for longer than the lease"
    assert (lock.renewed, lock.checks) == ([], 0)
    heartbeat.tick()
    assert heartbeat.still_held()
    lock.taken_by = BOB
    assert heartbeat.still_held(), "a takeover no renewal has seen yet is not known"
    clock.sleep(20)
    heartbeat.tick()
    assert not heartbeat.still_held()


def test_a_bake_stops_as_soon_as_a_renewal_finds_the_lock_lost() -> None:
    """The bake does not sleep on after losing the lock: LockLostError at the first renewal that fails."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= clock.at(100):
            lock.taken_by = BOB

    with pytest.raises(LockLostError, match=BOB):
        sleep_with_heartbeat(600, sleep, heartbeat)
    assert clock.now == clock.at(100)
    assert _offsets(lock.renewed) == [20, 40, 60, 80]


def test_an_unreachable_api_is_retried_and_fence_refuses_once_the_lease_expired() -> None:
    """A failed renewal is retried after `retry`; the lock is not lost, but fence() refuses past the lease."""
    clock, lock = Clock(), FakeLock(unreachable=True)
    heartbeat = Heartbeat(lock, clock, interval=20, lease_seconds=60, retry=5)
    clock.sleep(20)
    with capture_logs() as logs:
        heartbeat.tick()
    assert logs[0]["event"] == "lock-renew-failed"
    assert heartbeat.due_in() == 5
    clock.sleep(5)
    heartbeat.fence()  # the retry at 25s fails too, but the lease still holds
    assert heartbeat.lost is None
    assert lock.checks == 1
    lock.unreachable = False
    clock.sleep(5)
    heartbeat.tick()
    assert _offsets(lock.renewed) == [30]
    assert heartbeat.due_in() == 20
    lock.unreachable = True
    clock.sleep(61)
    with pytest.raises(LockLostError, match="could not renew it for 61s"):
        heartbeat.fence()


def test_a_run_woken_after_a_long_pause_learns_at_fence_who_took_the_lock() -> None:
    """A run frozen (SIGSTOP) past its lease renews on waking, finds the taker, and acts no more."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)
    clock.sleep(600)
    lock.taken_by = BOB
    with pytest.raises(LockLostError, match=f"lock lost to {BOB}"):
        heartbeat.fence()
    assert lock.checks == 0


def test_a_run_woken_after_a_pause_nobody_used_renews_and_goes_on() -> None:
    """A paused run whose Lease nobody touched renews it (proving no one wrote it) and passes the fence."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)
    clock.sleep(600)
    heartbeat.fence()
    assert _offsets(lock.renewed) == [600]


def test_the_interval_must_be_shorter_than_the_lease() -> None:
    """An interval that would let the Lease expire between renewals is refused."""
    with pytest.raises(ValueError, match="below the lease"):
        Heartbeat(FakeLock(), Clock(), interval=60, lease_seconds=60)


# ---- the heartbeat on its own thread ------------------------------------------------------------


def test_the_background_thread_renews_at_the_interval_while_the_caller_blocks() -> None:
    """start() ticks on a thread: each wait lasts until the next renewal; renewals at 20s, 40s, ... ."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        clock.sleep(seconds)
        return len(waits) == 30  # then ask to stop, as stop() would

    heartbeat.start(wait)
    _join_heartbeat()
    heartbeat.stop()
    assert waits == [20.0] * 30
    assert _offsets(lock.renewed) == [float(s) for s in range(20, 581, 20)]


def test_the_background_thread_stops_renewing_once_the_lock_is_lost() -> None:
    """After a renewal finds the lock taken, the thread ends by itself and fence() raises naming the taker."""
    clock, lock = Clock(), FakeLock()
    heartbeat = Heartbeat(lock, clock, interval=20)
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        clock.sleep(seconds)
        if len(waits) == 3:
            lock.taken_by = BOB
        return len(waits) > 100  # never reached: the loss ends the thread

    heartbeat.start(wait)
    _join_heartbeat()
    heartbeat.stop()
    assert len(waits) == 3
    assert _offsets(lock.renewed) == [20, 40]
    with pytest.raises(LockLostError, match=BOB):
        heartbeat.fence()


def test_stop_wakes_the_thread_from_its_wait() -> None:
    """With the default wait, stop() ends the thread at once instead of after the interval."""
    heartbeat = Heartbeat(FakeLock(), Clock(), interval=20)
    before = set(threading.enumerate())
    with heartbeat:
        (thread,) = set(threading.enumerate()) - before
        assert thread.name == "upgrader-lock-heartbeat"
        assert thread.daemon
    assert not thread.is_alive()


def test_a_heartbeat_runs_one_thread_at_a_time() -> None:
    """Starting a running heartbeat again is a programming error."""
    heartbeat = Heartbeat(FakeLock(), Clock(), interval=20)
    with heartbeat, pytest.raises(RuntimeError, match="already running"):
        heartbeat.start()
