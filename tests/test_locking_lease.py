"""LeaseLock against an in-memory coordination API: fenced renewals, takeovers seen, a lost Lease never re-created.

The fake stands in for kubernetes' CoordinationV1Api (the one boundary this adapter has); it
keeps resourceVersions like the API server, so a write with a stale one gets 409 Conflict.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from upgrader.adapters.kube_state import LeaseLock, LockRefusedError
from upgrader.errors import ClusterUnreachableError, UpgraderError
from upgrader.locking import Heartbeat, LockLostError, holder_alive_here, sleep_with_heartbeat

T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
ALICE = "alice@vm:123/run-a"
BOB = "bob@laptop:456/run-b"
CAROL = "carol@vm:789/run-c"
LEASE = "upgrader-lock-linkerd"
MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass
class FakeCoordination:
    """read/create/replace/delete_namespaced_lease over a dict, with the API server's resourceVersion rules."""

    leases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    writes: list[tuple[str, str]] = field(default_factory=list)  # (verb, holder)
    reads: int = 0
    versions: itertools.count[int] = field(default_factory=lambda: itertools.count(100))
    drop_answer: bool = False  # apply the next write, then lose its answer (a timeout)
    unreachable: bool = False  # fail every call before it reaches the server

    def _reach(self) -> None:
        if self.unreachable:
            raise urllib3.exceptions.MaxRetryError(None, "/apis/coordination.k8s.io", "connection refused")  # type: ignore[arg-type]

    def _answer(self, key: tuple[str, str]) -> SimpleNamespace:
        if self.drop_answer:
            self.drop_answer = False
            raise urllib3.exceptions.ReadTimeoutError(None, "/apis/coordination.k8s.io", "read timed out")  # type: ignore[arg-type]
        return self._lease(key)

    def _lease(self, key: tuple[str, str]) -> SimpleNamespace:
        stored = self.leases[key]
        spec = stored["spec"]

        def moment(name: str) -> dt.datetime | None:
            text = spec.get(name)
            return dt.datetime.strptime(text, MICRO).replace(tzinfo=dt.UTC) if text else None

        return SimpleNamespace(
            metadata=SimpleNamespace(name=key[1], resource_version=stored["resourceVersion"]),
            spec=SimpleNamespace(
                holder_identity=spec.get("holderIdentity"),
                lease_duration_seconds=spec.get("leaseDurationSeconds"),
                acquire_time=moment("acquireTime"),
                renew_time=moment("renewTime"),
            ),
        )

    def _store(self, key: tuple[str, str], verb: str, body: dict[str, Any]) -> None:
        self.leases[key] = {"spec": dict(body["spec"]), "resourceVersion": str(next(self.versions))}
        self.writes.append((verb, body["spec"].get("holderIdentity") or ""))

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> SimpleNamespace:
        self._reach()
        self.reads += 1
        if (namespace, name) not in self.leases:
            raise ApiException(status=404, reason="Not Found")
        return self._lease((namespace, name))

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> SimpleNamespace:
        self._reach()
        key = (namespace, body["metadata"]["name"])
        if key in self.leases:
            raise ApiException(status=409, reason="AlreadyExists")
        self._store(key, "create", body)
        return self._answer(key)

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> SimpleNamespace:
        self._reach()
        key = (namespace, name)
        if key not in self.leases:
            raise ApiException(status=404, reason="Not Found")
        if body["metadata"].get("resourceVersion") != self.leases[key]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self._store(key, "replace", body)
        return self._answer(key)

    def delete_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any] | None = None, **_: Any) -> None:
        self._reach()
        key = (namespace, name)
        if key not in self.leases:
            raise ApiException(status=404, reason="Not Found")
        wanted = ((body or {}).get("preconditions") or {}).get("resourceVersion")
        if wanted is not None and wanted != self.leases[key]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.writes.append(("delete", self.leases.pop(key)["spec"].get("holderIdentity") or ""))

    def annotate(self, namespace: str, name: str) -> None:
        """Someone else (kubectl) writes the Lease without changing its holder."""
        self.leases[(namespace, name)]["resourceVersion"] = str(next(self.versions))


def _lock(api: FakeCoordination) -> LeaseLock:
    return LeaseLock(None, "linkerd", "linkerd", coordination=api)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _renewed(api: FakeCoordination) -> str:
    return str(api.leases[("linkerd", LEASE)]["spec"]["renewTime"])


def test_renewals_keep_ownership_and_move_renew_time() -> None:
    """Each renewal writes over our own last write: renewTime moves, the token follows, check() passes."""
    api = FakeCoordination()
    lock = _lock(api)
    assert lock.acquire(ALICE, T0) == "no run holds the lock"
    assert lock.token is not None
    first = lock.token.resource_version
    for second in (20, 40, 60, 80):
        token = lock.renew(_at(second))
        assert token.resource_version == api.leases[("linkerd", LEASE)]["resourceVersion"]
        assert _renewed(api) == _at(second).strftime(MICRO)
        assert lock.check() == token
    assert lock.token.resource_version != first
    assert lock.token.acquired_at == T0
    assert api.leases[("linkerd", LEASE)]["spec"]["acquireTime"] == T0.strftime(MICRO)


def test_acquire_by_the_holder_is_a_fenced_renewal() -> None:
    """A second acquire by the same run (a checkpoint write) renews with the resourceVersion, as before."""
    api = FakeCoordination()
    lock = _lock(api)
    lock.acquire(ALICE, T0)
    assert lock.acquire(ALICE, _at(5)) == "this run holds the lock"
    assert api.writes == [("create", ALICE), ("replace", ALICE)]
    assert _renewed(api) == _at(5).strftime(MICRO)


def test_a_takeover_by_another_run_makes_check_and_renew_raise() -> None:
    """After B takes the expired lock over, A's check(), renew() and acquire() raise naming B, and write nothing."""
    api = FakeCoordination()
    alice, bob = _lock(api), _lock(api)
    alice.acquire(ALICE, T0)
    assert "taken over" in bob.acquire(BOB, _at(120), take_over=True)
    writes = list(api.writes)
    with pytest.raises(LockLostError, match=f"lock lost to {BOB}: Lease linkerd/{LEASE}") as lost:
        alice.check()
    assert "upgrader resume run-a" in lost.value.hint
    with pytest.raises(LockLostError, match=BOB):
        alice.renew(_at(121))
    with pytest.raises(LockLostError, match=BOB):
        alice.acquire(ALICE, _at(122))
    assert alice.release(ALICE) is False
    assert api.writes == writes
    assert bob.check().holder == BOB


def test_a_renewal_after_a_takeover_gets_a_conflict_and_is_lost() -> None:
    """A renewal with our old resourceVersion is refused (409) and turns into LockLostError naming the taker."""
    api = FakeCoordination()
    alice, bob = _lock(api), _lock(api)
    alice.acquire(ALICE, T0)
    bob.acquire(BOB, _at(120), take_over=True)
    with pytest.raises(LockLostError, match=f"lock lost to {BOB}"):
        alice.renew(_at(121))
    assert api.leases[("linkerd", LEASE)]["spec"]["holderIdentity"] == BOB


def test_the_woken_loser_never_re_creates_the_lease() -> None:
    """A run frozen while another took over and finished wakes to LockLostError; the Lease stays gone."""
    api = FakeCoordination()
    alice, bob = _lock(api), _lock(api)
    alice.acquire(ALICE, T0)
    bob.acquire(BOB, _at(120), take_over=True)
    assert bob.release(BOB) is True
    assert api.leases == {}
    writes = list(api.writes)
    for wake in (alice.check, lambda: alice.renew(_at(600)), lambda: alice.acquire(ALICE, _at(600))):
        with pytest.raises(LockLostError, match="is gone"):
            wake()
    assert alice.release(ALICE) is False
    assert api.leases == {}
    assert api.writes == writes


def test_a_heartbeat_over_the_lease_renews_through_a_bake_and_fences_after_a_takeover() -> None:
    """Heartbeat + LeaseLock: renewTime moves every 20s through a 10-minute bake; a takeover then stops the run."""
    api = FakeCoordination()
    lock = _lock(api)
    now = [T0]
    lock.acquire(ALICE, now[0])
    heartbeat = Heartbeat(lock, lambda: now[0], interval=20)
    stamps: list[str] = []

    def sleep(seconds: float) -> None:
        now[0] += dt.timedelta(seconds=seconds)
        stamps.append(_renewed(api))

    sleep_with_heartbeat(600, sleep, heartbeat)
    heartbeat.fence()
    assert [s for s, _ in itertools.groupby(stamps)] == [_at(t).strftime(MICRO) for t in range(0, 600, 20)]
    assert _renewed(api) == _at(600).strftime(MICRO)
    assert api.writes == [("create", ALICE)] + [("replace", ALICE)] * 30

    _lock(api).acquire(BOB, _at(601), take_over=True, holder_gone=lambda _holder: True)
    with pytest.raises(LockLostError, match=f"lock lost to {BOB}"):
        heartbeat.fence()


def test_a_second_run_is_refused_while_the_lease_is_fresh() -> None:
    """A fresh Lease of another host's run refuses a second run, even one asking to take over."""
    api = FakeCoordination()
    _lock(api).acquire(ALICE, T0)
    with pytest.raises(LockRefusedError, match=f"another run holds the lock: {ALICE}"):
        _lock(api).acquire(BOB, _at(30), take_over=True)


def test_an_expired_lease_of_another_host_is_taken_over_only_when_asked() -> None:
    """On another host an expired Lease refuses a plain acquire, naming --take-over-lock, and yields when asked."""
    api = FakeCoordination()
    _lock(api).acquire(ALICE, T0)
    elsewhere = _lock(api)
    alive_here = lambda holder: holder_alive_here(holder, "laptop", lambda _pid: True)  # noqa: E731
    with pytest.raises(LockRefusedError, match="--take-over-lock"):
        elsewhere.acquire(BOB, _at(120), holder_alive=alive_here)
    assert "taken over" in elsewhere.acquire(BOB, _at(120), take_over=True, holder_alive=alive_here)


def test_a_takeover_is_refused_while_the_holder_runs_on_this_host() -> None:
    """The live holder's pid on this host blocks a takeover, even asked and long after its last renewal."""
    api = FakeCoordination()
    _lock(api).acquire(ALICE, T0)
    here = _lock(api)
    with pytest.raises(LockRefusedError, match=r"pid 123\) is still running on this host.*kill 123"):
        here.acquire(
            CAROL,
            _at(3600),
            take_over=True,
            holder_alive=lambda holder: holder_alive_here(holder, "vm", lambda pid: pid == 123),
        )
    assert api.leases[("linkerd", LEASE)]["spec"]["holderIdentity"] == ALICE


def test_release_deletes_only_our_own_lease() -> None:
    """release() deletes the Lease we hold; another run's Lease is left alone; then a new run creates it anew."""
    api = FakeCoordination()
    alice, bob = _lock(api), _lock(api)
    alice.acquire(ALICE, T0)
    assert bob.release(BOB) is False
    assert alice.release(ALICE) is True
    assert api.leases == {}
    assert bob.acquire(BOB, _at(1)) == "no run holds the lock"
    assert alice.release(ALICE) is False
    assert api.leases[("linkerd", LEASE)]["spec"]["holderIdentity"] == BOB


def test_a_lease_written_by_someone_else_fails_the_fence() -> None:
    """A write we did not make (same holder, new resourceVersion) means we cannot prove the lock is ours."""
    api = FakeCoordination()
    lock = _lock(api)
    lock.acquire(ALICE, T0)
    api.annotate("linkerd", LEASE)
    with pytest.raises(LockLostError, match="changed by someone else"):
        lock.check()


def test_a_renewal_whose_answer_was_lost_is_recognised_as_ours() -> None:
    """A renewal that landed but timed out is adopted by the next renewal and check (same holder and renewTime)."""
    api = FakeCoordination()
    lock = _lock(api)
    lock.acquire(ALICE, T0)
    api.drop_answer = True
    with pytest.raises(ClusterUnreachableError, match="did not answer"):
        lock.renew(_at(20))
    assert _renewed(api) == _at(20).strftime(MICRO)
    assert lock.check().renewed_at == _at(20)
    api.drop_answer = True
    with pytest.raises(ClusterUnreachableError):
        lock.renew(_at(40))
    assert lock.renew(_at(60)).renewed_at == _at(60)
    assert lock.check().holder == ALICE


def test_an_unreachable_api_is_retryable_and_does_not_lose_the_lock() -> None:
    """Renewing while the API is down raises a retryable error; once it answers, renewing goes on."""
    api = FakeCoordination()
    lock = _lock(api)
    lock.acquire(ALICE, T0)
    api.unreachable = True
    with pytest.raises(ClusterUnreachableError) as error:
        lock.renew(_at(20))
    assert error.value.retryable
    api.unreachable = False
    assert lock.renew(_at(25)).renewed_at == _at(25)


def test_a_forbidden_lease_is_a_clear_error() -> None:
    """A 403 on the Lease says which permission is missing, and retrying will not help."""

    class Forbidden(FakeCoordination):
        def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> SimpleNamespace:
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(UpgraderError, match="cannot take the lock linkerd/upgrader-lock-linkerd: 403") as error:
        _lock(Forbidden()).acquire(ALICE, T0)
    assert "leases.coordination.k8s.io" in error.value.hint
    assert not error.value.retryable


def test_two_runs_writing_at_once_cannot_both_win() -> None:
    """A create that races another (409) is refused naming the run that won."""

    class Racing(FakeCoordination):
        def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **kw: Any) -> SimpleNamespace:
            super().create_namespaced_lease(namespace, {**body, "spec": {**body["spec"], "holderIdentity": BOB}})
            return super().create_namespaced_lease(namespace, body, **kw)

    with pytest.raises(LockRefusedError, match=f"taken at the same moment by {BOB}"):
        _lock(Racing()).acquire(ALICE, T0)


def test_renew_and_check_need_the_lock_taken_first() -> None:
    """A lock object that never took the lock cannot renew or pass the fence."""
    lock = _lock(FakeCoordination())
    with pytest.raises(LockLostError, match="not held by this run"):
        lock.check()
    with pytest.raises(LockLostError, match="not held by this run"):
        lock.renew(T0)


def test_describe_reads_holder_and_last_renewal() -> None:
    """describe() gives `upgrader status` the holder and the last renewTime, or None with no Lease."""
    api = FakeCoordination()
    lock = _lock(api)
    assert lock.describe() is None
    lock.acquire(ALICE, T0)
    lock.renew(_at(20))
    view = lock.describe()
    assert view is not None
    assert (view.holder, view.renewed_at, view.duration_seconds) == (ALICE, _at(20), 60)
