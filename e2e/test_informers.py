"""The data-plane cache follows the real cluster through list+watch and stops cleanly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import structlog
from kubernetes import client

from upgrader.adapters.informers import DataPlaneCache
from upgrader.errors import ClusterUnreachableError
from upgrader.ports import DataPlaneView

pytestmark = pytest.mark.e2e

THREAD_PREFIX = "upgrader-informer-"
ANNOTATION = "upgrader.test/restarted-at"


def _deployment(replicas: int) -> dict[str, object]:
    labels = {"app": "web"}
    return {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": "registry.example/demo:1"}]},
            },
        },
    }


def _until(
    cache: DataPlaneCache, what: str, check: Callable[[DataPlaneView], bool], timeout: float = 30
) -> DataPlaneView:
    """Wait on the cache's change counter (no polling) until ``check`` holds for a snapshot."""
    deadline = time.monotonic() + timeout
    view = cache.snapshot()
    while not check(view):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last version {view.version}")
        cache.wait_for_change(view.version, left)
        view = cache.snapshot()
    return view


def _informer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def test_the_cache_follows_a_deployment_from_creation_to_deletion(api: client.ApiClient, namespace: str) -> None:
    """A new Deployment and its Ready pods appear, a template patch shows, a delete removes it; stop ends threads."""
    apps = client.AppsV1Api(api)
    with DataPlaneCache(api) as cache:
        cache.wait_synced(timeout=30)
        synced = cache.snapshot()
        assert namespace in {n.name for n in synced.namespaces}
        assert len(_informer_threads()) == 6

        # Nothing of ours changes: some 1 s wait ends with the counter unchanged (the rest of the
        # cluster may still be settling from earlier tests, so a few tries are allowed).
        quiet = []
        for _ in range(10):
            before = cache.snapshot().version
            started = time.monotonic()
            after = cache.wait_for_change(before, timeout=1.0)
            quiet.append((after, before, time.monotonic() - started))
            if after == before:
                break
        after, before, waited = quiet[-1]
        assert after == before, f"the counter kept moving: {quiet}"
        assert waited >= 0.5

        started = time.monotonic()
        apps.create_namespaced_deployment(namespace, _deployment(2))
        assert cache.wait_for_change(before, timeout=30) > before
        assert time.monotonic() - started < 30

        view = _until(
            cache,
            "the Deployment with 2 ready pods",
            lambda v: (
                any(w.key == ("Deployment", namespace, "web") and w.ready == 2 for w in v.workloads)
                and sum(p.ready and p.phase == "Running" for p in v.pods if p.namespace == namespace) == 2
            ),
        )
        web = next(w for w in view.workloads if w.key == ("Deployment", namespace, "web"))
        assert (web.replicas, web.total, web.strategy, web.max_surge, web.max_unavailable) == (
            2,
            2,
            "RollingUpdate",
            "25%",
            "25%",
        )
        pods = [p for p in view.pods if p.namespace == namespace]
        assert all(p.owner_kind == "ReplicaSet" and p.restarts == 0 and not p.waiting for p in pods)

        patch = {"spec": {"template": {"metadata": {"annotations": {ANNOTATION: "now"}}}}}
        apps.patch_namespaced_deployment("web", namespace, patch)
        _until(
            cache,
            "the patched template annotation",
            lambda v: any(
                w.key == ("Deployment", namespace, "web") and ANNOTATION in w.pod_annotations for w in v.workloads
            ),
        )

        apps.delete_namespaced_deployment("web", namespace)
        _until(
            cache,
            "the Deployment to disappear",
            lambda v: all(w.key != ("Deployment", namespace, "web") for w in v.workloads),
        )
        stopping = time.monotonic()
    assert _informer_threads() == []
    assert time.monotonic() - stopping < 5


def test_an_unreachable_cluster_is_reported_by_name_and_retried() -> None:
    """Against a closed port, wait_synced names every resource it could not list; the threads log watch-restart."""
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:1"
    configuration.verify_ssl = False
    nowhere = client.ApiClient(configuration)
    try:
        with structlog.testing.capture_logs() as logs, DataPlaneCache(nowhere) as cache:
            with pytest.raises(ClusterUnreachableError) as raised:
                cache.wait_synced(timeout=1.5)
            assert cache.wait_for_change(0, timeout=0.2) == 0
    finally:
        nowhere.close()
    assert "pods" in raised.value.message
    assert "poddisruptionbudgets" in raised.value.message
    assert raised.value.hint
    assert {e["resource"] for e in logs if e["event"] == "watch-restart"} >= {"pods", "namespaces"}
    assert _informer_threads() == []
