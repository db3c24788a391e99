"""Run state in the cluster: checkpoint Secrets and the installation Lease, against the real API."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from kubernetes import client

from upgrader.adapters.kube_state import LeaseLock, LockRefusedError, SecretCheckpointStore
from upgrader.checkpoints import Checkpoint
from upgrader.states import RunState

NOW = dt.datetime.now(dt.UTC)


def test_secret_store_round_trips_and_lists(api: client.ApiClient, namespace: str) -> None:
    """A checkpoint stored as a Secret reads back equal, is listed by label, updates in place and purges."""
    store = SecretCheckpointStore(api, namespace)
    cp = Checkpoint.new("run-e2e", {"to": "stable-2.14.10"}, NOW)
    store.store(checkpoint=cp)
    moved = cp.model_copy(update={"state": RunState.UPGRADING_CRDS, "hop": 1})
    store.store(checkpoint=moved)
    assert store.fetch(run_id="run-e2e") == moved
    assert [c.run_id for c in store.runs()] == ["run-e2e"]
    secret = client.CoreV1Api(api).read_namespaced_secret("upgrader-run-run-e2e", namespace)
    assert secret.metadata.annotations["upgrader.io/state"] == "UpgradingCRDs"
    assert b"PRIVATE KEY" not in base64.b64decode(secret.data["checkpoint.json"])
    store.purge(run_id="run-e2e")
    assert store.fetch(run_id="run-e2e") is None


def test_a_second_run_is_refused_naming_the_first(api: client.ApiClient, namespace: str) -> None:
    """Run A holds the Lease; run B is refused with A's identity; after A releases, B gets it."""
    lock = LeaseLock(api, namespace, "linkerd")
    lock.acquire("alice@ci:10/run-a", NOW)
    with pytest.raises(LockRefusedError, match="alice@ci:10/run-a"):
        lock.acquire("bob@laptop:20/run-b", NOW)
    assert lock.acquire("alice@ci:10/run-a", NOW + dt.timedelta(seconds=5)) == "this run holds the lock"
    lock.release("alice@ci:10/run-a")
    lock.acquire("bob@laptop:20/run-b", NOW)
    view = lock.observe()
    assert view is not None
    assert view.holder == "bob@laptop:20/run-b"


def test_a_stale_lock_is_taken_over_only_when_asked(api: client.ApiClient, namespace: str) -> None:
    """A holder silent past its lease blocks a plain acquire but not an explicit take-over."""
    lock = LeaseLock(api, namespace, "linkerd")
    lock.acquire("gone@host:1/run-old", NOW - dt.timedelta(minutes=10))
    with pytest.raises(LockRefusedError, match="--take-over-lock"):
        lock.acquire("new@host:2/run-new", NOW)
    assert "taken over" in lock.acquire("new@host:2/run-new", NOW, take_over=True)
