"""LeaseLock against the real kube-apiserver: fenced renewals, takeovers seen, a lost Lease must stay lost.

Moved here from the unit suite, which faked kubernetes' CoordinationV1Api. Every write below
is judged by the API server itself: its resourceVersions, its 409 Conflict and 404, its RBAC.
"Another process" is this test writing the Lease with the kubernetes client, as kubectl or a
second upgrader would. What the server did is read back with the same client: the Lease
itself, and the server's own record of every write to it (a watch replayed from a
resourceVersion taken before the test acted), so "wrote nothing" means no event at all.

The lease times (``T0`` onwards) are what the runs pass in; the API server stores them as
given, so a Heartbeat over a real LeaseLock can bake for ten simulated minutes on a fake clock.
Most of those times are not on a whole second; one test takes the lock on a whole second, which
the client once sent in a form the API refused.

The real API showed a LeaseLock bug a fake had hidden: a renewal by PUT of a Lease that is gone
re-created it (the API server creates Leases on update). Renewals are merge patches carrying our
resourceVersion now; the woken-loser test shows a loser never re-creates the Lease.

Dropped from the unit suite: "a renewal whose answer was lost is recognised as ours". It needs
a write that lands while its answer is lost (a read timeout after the commit), a fault a real
API server does not produce on demand; no test covers LeaseLock adopting such a write now.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import itertools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from e2e.harness.backends import ClusterHandle
from e2e.harness.waits import wait_for
from upgrader.adapters.kube_state import LeaseLock, LockRefusedError
from upgrader.adapters.retrying import UNREACHABLE_PATIENCE, wait_for_the_api
from upgrader.errors import ClusterUnreachableError, UpgraderError
from upgrader.locking import (
    Heartbeat,
    LockLostError,
    holder_alive_here,
    holder_gone_here,
    pid_alive,
    sleep_with_heartbeat,
)

# Not on a whole second: kubernetes' client re-serialises a Lease's times with isoformat(), which
# drops ".000000" (LeaseLock nudges a whole second by a microsecond; one test covers that).
T0 = dt.datetime.now(dt.UTC).replace(microsecond=123456)
LEASE = "upgrader-lock-linkerd"
HOST = socket.gethostname()
ALICE = "alice@host-a.invalid:123/run-a"
BOB = "bob@host-b.invalid:456/run-b"
CAROL = "carol@host-c.invalid:789/run-c"


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def _alive_here(holder: str) -> bool:
    return holder_alive_here(holder, HOST, pid_alive)


def _gone_here(holder: str) -> bool:
    return holder_gone_here(holder, HOST, pid_alive)


def _here(pid: int, run: str) -> str:
    """A holder identity of a run on this host, shaped like upgrader's own (user@host:pid/run)."""
    return f"{getpass.getuser()}@{HOST}:{pid}/{run}"


def _ended_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def _lock(
    api: client.ApiClient, namespace: str, control_plane: str = "linkerd", sleeps: list[float] | None = None
) -> LeaseLock:
    """The lock; with ``sleeps``, the retry policy's waits are recorded there instead of slept."""
    return LeaseLock(api, namespace, control_plane, sleep=time.sleep if sleeps is None else sleeps.append)


def _lease(api: client.ApiClient, namespace: str, name: str = LEASE) -> Any:
    """The Lease as the API server has it, or None."""
    try:
        return client.CoordinationV1Api(api).read_namespaced_lease(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _renewed(api: client.ApiClient, namespace: str) -> dt.datetime:
    return _lease(api, namespace).spec.renew_time


def _mark(api: client.ApiClient, namespace: str) -> str:
    """A resourceVersion to replay the namespace's Lease writes from (see _writes)."""
    return str(client.CoordinationV1Api(api).list_namespaced_lease(namespace).metadata.resource_version)


def _writes(api: client.ApiClient, namespace: str, since: str, name: str = LEASE) -> list[tuple[str, str]]:
    """Every write the API server made to Lease ``name`` after ``since``: (ADDED/MODIFIED/DELETED, holder)."""
    events = watch.Watch().stream(
        client.CoordinationV1Api(api).list_namespaced_lease,
        namespace,
        field_selector=f"metadata.name={name}",
        resource_version=since,
        timeout_seconds=1,
    )
    seen = [(e["type"], e["object"].spec.holder_identity or "") for e in events]
    assert all(kind in {"ADDED", "MODIFIED", "DELETED"} for kind, _ in seen), seen
    return seen


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _take_over_as(api: client.ApiClient, namespace: str, holder: str, at: dt.datetime) -> str:
    """Another process takes the Lease over with the kubernetes client (fenced by the version it read)."""
    coord = client.CoordinationV1Api(api)
    current = coord.read_namespaced_lease(LEASE, namespace)
    body = {
        "metadata": {"name": LEASE, "resourceVersion": current.metadata.resource_version},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 60,
            "acquireTime": _stamp(at),
            "renewTime": _stamp(at),
        },
    }
    return str(coord.replace_namespaced_lease(LEASE, namespace, body).metadata.resource_version)


@pytest.fixture
def own_api(cluster: ClusterHandle) -> Iterator[client.ApiClient]:
    """An API client of the test's own, free to be pointed elsewhere or to impersonate someone."""
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api_client
    api_client.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_renewals_keep_ownership_and_move_renew_time(api: client.ApiClient, namespace: str) -> None:
    """Each renewal writes over our own last write: renewTime moves, the token follows, check() passes."""
    lock = _lock(api, namespace)
    assert lock.acquire(ALICE, T0) == "no run holds the lock"
    assert lock.token is not None
    first = lock.token.resource_version
    for second in (20, 40, 60, 80):
        token = lock.renew(_at(second))
        lease = _lease(api, namespace)
        assert token.resource_version == lease.metadata.resource_version
        assert lease.spec.renew_time == _at(second)
        assert lock.check() == token
    assert lock.token.resource_version != first
    assert lock.token.acquired_at == T0
    lease = _lease(api, namespace)
    assert (lease.spec.holder_identity, lease.spec.acquire_time) == (ALICE, T0)


def test_acquire_by_the_holder_is_a_fenced_renewal(api: client.ApiClient, namespace: str) -> None:
    """A second acquire by the same run renews with its resourceVersion, so after a write by anyone else it fails."""
    since = _mark(api, namespace)
    lock = _lock(api, namespace)
    lock.acquire(ALICE, T0)
    assert lock.acquire(ALICE, _at(5)) == "this run holds the lock"
    assert _writes(api, namespace, since) == [("ADDED", ALICE), ("MODIFIED", ALICE)]
    assert _renewed(api, namespace) == _at(5)

    # someone else writes the Lease (holder unchanged): the holder's next acquire must not write over it
    client.CoordinationV1Api(api).patch_namespaced_lease(
        LEASE, namespace, {"metadata": {"annotations": {"example.com/touched": "yes"}}}
    )
    touched = _lease(api, namespace).metadata.resource_version
    with pytest.raises(LockLostError, match="changed by someone else") as lost:
        lock.acquire(ALICE, _at(10))
    assert isinstance(lost.value.__cause__, client.ApiException)
    assert lost.value.__cause__.status == 409
    assert _lease(api, namespace).metadata.resource_version == touched


def test_a_takeover_by_another_process_makes_check_and_renew_raise(api: client.ApiClient, namespace: str) -> None:
    """After another process takes the Lease over, check(), renew() and acquire() raise naming it, and write nothing."""
    alice = _lock(api, namespace)
    alice.acquire(ALICE, T0)
    taken = _take_over_as(api, namespace, BOB, _at(120))
    since = _mark(api, namespace)
    with pytest.raises(LockLostError, match=f"lock lost to {BOB}: Lease {namespace}/{LEASE}") as lost:
        alice.check()
    assert "upgrader resume run-a" in lost.value.hint
    with pytest.raises(LockLostError, match=BOB):
        alice.renew(_at(121))
    with pytest.raises(LockLostError, match=BOB):
        alice.acquire(ALICE, _at(122))
    assert alice.release(ALICE) is False
    assert _writes(api, namespace, since) == []
    lease = _lease(api, namespace)
    assert (lease.spec.holder_identity, lease.metadata.resource_version) == (BOB, taken)


def test_a_renewal_after_a_takeover_gets_a_conflict_and_is_lost(api: client.ApiClient, namespace: str) -> None:
    """A renewal with our old resourceVersion gets the server's 409 and turns into LockLostError naming the taker."""
    alice, bob = _lock(api, namespace), _lock(api, namespace)
    alice.acquire(ALICE, T0)
    assert "taken over" in bob.acquire(BOB, _at(120), take_over=True)
    with pytest.raises(LockLostError, match=f"lock lost to {BOB}") as lost:
        alice.renew(_at(121))
    assert isinstance(lost.value.__cause__, client.ApiException)
    assert lost.value.__cause__.status == 409
    assert _lease(api, namespace).spec.holder_identity == BOB
    assert bob.check().holder == BOB


def _taken_over_and_released(api: client.ApiClient, namespace: str, control_plane: str) -> None:
    taker = _lock(api, namespace, control_plane)
    assert "taken over" in taker.acquire(BOB, _at(120), take_over=True)
    assert taker.release(BOB) is True


def _deleted_by_someone_else(api: client.ApiClient, namespace: str, control_plane: str) -> None:
    client.CoordinationV1Api(api).delete_namespaced_lease(f"upgrader-lock-{control_plane}", namespace)


@pytest.mark.parametrize(
    "first",
    ["check", "renew", "acquire"],
    ids=["woken by a check", "woken by a renewal", "woken by acquire"],
)
def test_the_woken_loser_never_re_creates_the_lease(api: client.ApiClient, namespace: str, first: str) -> None:
    """A run frozen while its Lease went away wakes to LockLostError, whatever it calls first; the Lease stays gone."""
    for vanish in (_taken_over_and_released, _deleted_by_someone_else):
        control_plane = f"linkerd-{vanish.__name__.strip('_').replace('_', '-')}"  # one Lease per way of vanishing
        name = f"upgrader-lock-{control_plane}"
        alice = _lock(api, namespace, control_plane)
        alice.acquire(ALICE, T0)
        vanish(api, namespace, control_plane)
        assert _lease(api, namespace, name) is None
        since = _mark(api, namespace)
        wakes: dict[str, Callable[[], object]] = {
            "check": alice.check,
            "renew": lambda lock=alice: lock.renew(_at(600)),
            "acquire": lambda lock=alice: lock.acquire(ALICE, _at(600)),
        }
        for call in sorted(wakes, key=lambda c: c != first):
            with pytest.raises(LockLostError, match="is gone"):
                wakes[call]()
        assert alice.release(ALICE) is False
        assert _lease(api, namespace, name) is None
        assert _writes(api, namespace, since, name) == []


def test_a_heartbeat_over_the_lease_renews_through_a_bake_and_fences_after_a_takeover(
    api: client.ApiClient, namespace: str
) -> None:
    """Heartbeat + LeaseLock: renewTime moves every 20s through a 10-minute bake; a takeover then stops the run."""
    me = _here(_ended_pid(), "run-a")  # a run on this host whose process ends before the takeover
    since = _mark(api, namespace)
    lock = _lock(api, namespace)
    now = [T0]
    lock.acquire(me, now[0])
    heartbeat = Heartbeat(lock, lambda: now[0], interval=20)
    stamps: list[dt.datetime] = []

    def sleep(seconds: float) -> None:
        now[0] += dt.timedelta(seconds=seconds)
        stamps.append(_renewed(api, namespace))

    sleep_with_heartbeat(600, sleep, heartbeat)
    heartbeat.fence()
    assert [s for s, _ in itertools.groupby(stamps)] == [_at(t) for t in range(0, 600, 20)]
    assert _renewed(api, namespace) == _at(600)
    assert _writes(api, namespace, since) == [("ADDED", me)] + [("MODIFIED", me)] * 30

    # its process is gone from this host, so its fresh Lease may be taken over when asked
    assert "taken over" in _lock(api, namespace).acquire(BOB, _at(601), take_over=True, holder_gone=_gone_here)
    with pytest.raises(LockLostError, match=f"lock lost to {BOB}"):
        heartbeat.fence()


def test_a_second_run_is_refused_while_the_lease_is_fresh(api: client.ApiClient, namespace: str) -> None:
    """A fresh Lease of another host's run refuses a second run, even one asking to take over."""
    _lock(api, namespace).acquire(ALICE, T0)
    held = _lease(api, namespace).metadata.resource_version
    with pytest.raises(LockRefusedError, match=f"another run holds the lock: {ALICE}"):
        _lock(api, namespace).acquire(BOB, _at(30), take_over=True, holder_alive=_alive_here, holder_gone=_gone_here)
    assert _lease(api, namespace).metadata.resource_version == held


def test_an_expired_lease_of_another_host_is_taken_over_only_when_asked(api: client.ApiClient, namespace: str) -> None:
    """On another host an expired Lease refuses a plain acquire, naming --take-over-lock, and yields when asked.

    Its holder's pid is running here (ours), but on another host, so it does not block the takeover.
    """
    elsewhere = f"alice@not-{HOST}.invalid:{os.getpid()}/run-a"
    _lock(api, namespace).acquire(elsewhere, T0)
    taker = _lock(api, namespace)
    with pytest.raises(LockRefusedError, match="--take-over-lock"):
        taker.acquire(BOB, _at(120), holder_alive=_alive_here, holder_gone=_gone_here)
    assert _lease(api, namespace).spec.holder_identity == elsewhere
    assert "taken over" in taker.acquire(
        BOB, _at(120), take_over=True, holder_alive=_alive_here, holder_gone=_gone_here
    )
    assert _lease(api, namespace).spec.holder_identity == BOB


def test_a_takeover_is_refused_while_the_holder_runs_on_this_host(api: client.ApiClient, namespace: str) -> None:
    """The live holder's pid on this host blocks a takeover, even asked and long after its last renewal."""
    pid = os.getpid()
    holder = _here(pid, "run-a")
    _lock(api, namespace).acquire(holder, T0)
    held = _lease(api, namespace).metadata.resource_version
    with pytest.raises(LockRefusedError, match=rf"pid {pid}\) is still running on this host.*kill {pid}"):
        _lock(api, namespace).acquire(
            CAROL, _at(3600), take_over=True, holder_alive=_alive_here, holder_gone=_gone_here
        )
    lease = _lease(api, namespace)
    assert (lease.spec.holder_identity, lease.metadata.resource_version) == (holder, held)


def test_release_deletes_only_our_own_lease(api: client.ApiClient, namespace: str) -> None:
    """release() deletes the Lease we hold; another run's Lease is left alone; then a new run creates it anew."""
    alice, bob = _lock(api, namespace), _lock(api, namespace)
    alice.acquire(ALICE, T0)
    assert bob.release(BOB) is False
    assert _lease(api, namespace).spec.holder_identity == ALICE
    assert alice.release(ALICE) is True
    assert _lease(api, namespace) is None
    assert bob.acquire(BOB, _at(1)) == "no run holds the lock"
    assert alice.release(ALICE) is False
    assert _lease(api, namespace).spec.holder_identity == BOB


def test_a_lease_written_by_someone_else_fails_the_fence(api: client.ApiClient, namespace: str) -> None:
    """A write we did not make (same holder, new resourceVersion) means we cannot prove the lock is ours."""
    lock = _lock(api, namespace)
    lock.acquire(ALICE, T0)
    client.CoordinationV1Api(api).patch_namespaced_lease(
        LEASE, namespace, {"metadata": {"annotations": {"example.com/touched": "yes"}}}
    )
    assert _lease(api, namespace).spec.holder_identity == ALICE
    with pytest.raises(LockLostError, match="changed by someone else"):
        lock.check()


def test_an_unreachable_api_is_a_retryable_error(namespace: str) -> None:
    """A LeaseLock whose API does not answer (a closed port) waits for it with backoff while a run holds the
    lock (the waits are recorded, not slept), then raises a retryable error naming the lock."""
    configuration = client.Configuration()
    configuration.host = f"https://127.0.0.1:{_closed_port()}"
    sleeps: list[float] = []
    wait_for_the_api(True)
    with client.ApiClient(configuration) as nowhere, contextlib.ExitStack() as stack:
        stack.callback(wait_for_the_api, False)
        lock = _lock(nowhere, namespace, sleeps=sleeps)
        with pytest.raises(
            ClusterUnreachableError, match=f"lock {namespace}/{LEASE}: the Kubernetes API did not answer"
        ) as error:
            lock.acquire(ALICE, T0)
    assert error.value.retryable
    assert sleeps[0] < sleeps[-1], sleeps  # backoff, not a burst
    assert sum(sleeps) >= UNREACHABLE_PATIENCE


def test_an_api_outage_while_holding_the_lock_is_retryable_and_does_not_lose_it(
    own_api: client.ApiClient, namespace: str
) -> None:
    """Renewing while the API does not answer raises a retryable error once the retry policy gives up (its
    waits recorded, not slept); once the API answers, renewing goes on."""
    lock = _lock(own_api, namespace, sleeps=[])
    lock.acquire(ALICE, T0)
    reachable = own_api.configuration.host
    own_api.configuration.host = f"https://127.0.0.1:{_closed_port()}"  # the API goes away
    with pytest.raises(ClusterUnreachableError) as error:
        lock.renew(_at(20))
    assert error.value.retryable
    with pytest.raises(ClusterUnreachableError):
        lock.check()
    own_api.configuration.host = reachable  # and comes back
    assert lock.renew(_at(25)).renewed_at == _at(25)
    assert lock.check().holder == ALICE
    assert _renewed(own_api, namespace) == _at(25)


def test_a_forbidden_lease_is_a_clear_error(api: client.ApiClient, own_api: client.ApiClient, namespace: str) -> None:
    """A run whose account may read but not create Leases gets the server's 403 saying which permission is missing."""
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "lease-reader"},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "lease-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}],
        },
    )
    own_api.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:default")
    lock = _lock(own_api, namespace)
    wait_for("the Role to let the account read Leases", lambda: lock.observe() is None, timeout=30)
    with pytest.raises(UpgraderError, match=f"cannot take the lock {namespace}/{LEASE}: 403 .*forbidden") as error:
        lock.acquire(ALICE, T0)
    assert "leases.coordination.k8s.io" in error.value.hint
    assert not error.value.retryable
    assert _lease(api, namespace) is None


def _race(runs: dict[str, Callable[[], str]]) -> dict[str, str | Exception]:
    """Run each call on its own thread at once; what each returned or raised, by run."""
    start = threading.Barrier(len(runs), timeout=30)
    outcomes: dict[str, str | Exception] = {}

    def run(me: str) -> None:
        start.wait()
        try:
            outcomes[me] = runs[me]()
        except Exception as exc:  # judged by the caller
            outcomes[me] = exc

    threads = [threading.Thread(target=run, args=(me,), name=f"lease-race-{me}") for me in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(outcomes) == set(runs), f"a racing run did not finish: {outcomes}"
    return outcomes


def _one_winner(outcomes: dict[str, str | Exception]) -> tuple[str, LockRefusedError]:
    """The run that got the lock and the refusal of the other; fails unless exactly one won."""
    winners = [me for me, outcome in outcomes.items() if isinstance(outcome, str)]
    assert len(winners) == 1, outcomes
    (refused,) = [outcome for outcome in outcomes.values() if not isinstance(outcome, str)]
    assert isinstance(refused, LockRefusedError), outcomes
    return winners[0], refused


def test_two_runs_taking_over_at_once_cannot_both_win(api: client.ApiClient, namespace: str) -> None:
    """Two runs read the same expired Lease, then both write it: the server takes one write, the other gets 409."""
    _lock(api, namespace).acquire(ALICE, T0)
    both_read = threading.Barrier(2, timeout=30)

    def alive_after_both_read(holder: str) -> bool:  # acquire asks this between its read and its write
        both_read.wait()
        return _alive_here(holder)

    locks = {BOB: _lock(api, namespace), CAROL: _lock(api, namespace)}
    outcomes = _race(
        {
            me: lambda me=me: locks[me].acquire(me, _at(120), take_over=True, holder_alive=alive_after_both_read)
            for me in locks
        }
    )
    winner, refused = _one_winner(outcomes)
    assert f"taken at the same moment by {winner}" in refused.message
    assert isinstance(refused.__cause__, client.ApiException)
    assert refused.__cause__.status == 409
    assert {me: lock.token is not None for me, lock in locks.items()} == {me: me == winner for me in locks}
    assert locks[winner].check().holder == winner
    assert _lease(api, namespace).spec.holder_identity == winner


def test_two_runs_creating_the_lease_at_once_cannot_both_win(api: client.ApiClient, namespace: str) -> None:
    """Two runs racing for a free lock, twenty times: each time exactly one holds it, the other is refused naming it."""
    for round_ in range(20):
        control_plane = f"race-{round_}"
        locks = {BOB: _lock(api, namespace, control_plane), CAROL: _lock(api, namespace, control_plane)}
        outcomes = _race({me: lambda me=me, lock=lock: lock.acquire(me, T0) for me, lock in locks.items()})
        winner, refused = _one_winner(outcomes)
        assert (
            f"another run holds the lock: {winner}" in refused.message
            or f"taken at the same moment by {winner}" in refused.message
        ), (round_, refused.message)
        assert _lease(api, namespace, f"upgrader-lock-{control_plane}").spec.holder_identity == winner


def test_renew_and_check_need_the_lock_taken_first(api: client.ApiClient, namespace: str) -> None:
    """A lock object that never took the lock cannot renew or pass the fence, and writes no Lease."""
    lock = _lock(api, namespace)
    with pytest.raises(LockLostError, match="not held by this run"):
        lock.check()
    with pytest.raises(LockLostError, match="not held by this run"):
        lock.renew(T0)
    assert _lease(api, namespace) is None


def test_describe_reads_holder_and_last_renewal(api: client.ApiClient, namespace: str) -> None:
    """describe() gives `upgrader status` the holder and the last renewTime, or None with no Lease."""
    lock = _lock(api, namespace)
    assert lock.describe() is None
    lock.acquire(ALICE, T0)
    lock.renew(_at(20))
    view = lock.describe()
    assert view is not None
    assert (view.holder, view.renewed_at, view.duration_seconds) == (ALICE, _at(20), 60)


def test_a_lease_taken_on_a_whole_second_is_written(api: client.ApiClient, namespace: str) -> None:
    """A lock taken at a time with no microseconds is written like any other."""
    lock = _lock(api, namespace)
    lock.acquire(ALICE, T0.replace(microsecond=0))
    written = _lease(api, namespace).spec.renew_time
    assert abs((written - T0.replace(microsecond=0)).total_seconds()) < 0.001  # one microsecond later at most
    lock.renew(T0.replace(microsecond=0) + dt.timedelta(seconds=20))
    assert _lease(api, namespace).spec.holder_identity == ALICE
