"""The data plane on the fixture world: waves, throttles measured from the API, health gates."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.fixtures import mesh
from e2e.fixtures.world import World
from e2e.harness.rollouts import RolloutRecorder
from e2e.harness.stages import PodTiming, timed

pytestmark = pytest.mark.e2e
PROXY = "cr.l5d.io/linkerd/proxy:"
POOL = "upgrader-e2e/pool"
ROLLING_PODS = PodTiming(ready_ms=800, jitter_ms=400, delete_ms=300)


@pytest.fixture
def env(clean_world: World, tmp_path: Path) -> dict[str, str]:
    return clean_world.helm_env(tmp_path)


def _upgrader(world: World, env: dict[str, str], *args: str) -> Any:
    return world.upgrader(env, "--log-format", "json", *args, timeout=600)


def _events(out: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]


def _checkpoint(tmp_path: Path) -> dict[str, Any]:
    files = sorted((tmp_path / "state").glob("*.json"))
    assert len(files) == 1, files
    data: dict[str, Any] = json.loads(files[0].read_text())
    return data


def _pods(world: World, ns: str, selector: str = "") -> list[Any]:
    items = client.CoreV1Api(world.api).list_namespaced_pod(ns, label_selector=selector).items
    return [p for p in items if p.metadata.deletion_timestamp is None]


def _proxies(world: World, ns: str, selector: str = "") -> set[str]:
    return {
        c.image.removeprefix(PROXY)
        for p in _pods(world, ns, selector)
        for c in p.spec.containers
        if c.name == "linkerd-proxy"
    }


def test_waves_restart_every_meshed_workload_throttled_and_leave_the_rest_alone(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """Demonstrations 1 and 2: a canary wave, then the rest; 2 at a time per namespace (from the API's watch);
    every meshed pod ends on the target proxy; unmeshed, opted-out, skipped workloads and Job pods keep their pods."""
    world = clean_world
    world.install("stable-2.13.7")
    # Pods take 0.4-1.2 s to become Ready and 0.3 s to go (KWOK stages): rollouts last long enough to overlap.
    docs = timed(mesh.sample_mesh(scale_namespaces=2, workloads_per_namespace=6), ROLLING_PODS)
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))
    world.kubectl("annotate", "deployment", "api", "-n", "shop", "upgrader.io/skip=true")
    solo = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "solo", "namespace": "shop", "labels": {"app": "solo"}},
        "spec": {"containers": [{"name": "solo", "image": mesh.IMAGE.format(name="solo")}]},
    }
    world.apply([solo])  # a bare pod, meshed by the injector: reported, never restarted
    world.wait_ready(["shop"])
    untouched = {
        f"{ns}/{sel}": {p.metadata.uid for p in _pods(world, ns, sel)}
        for ns, sel in (
            ("shop", "app=admin"),
            ("legacy", "app=batch"),
            ("shop", "app=api"),
            ("edge", "app=report"),
            ("shop", "app=solo"),
        )
    }
    assert all(untouched.values()), untouched
    spec = tmp_path / "waves.yaml"
    spec.write_text(
        "name: waves\nwaivers: [kubernetes-version]\n"
        "dataPlane:\n  maxConcurrentPerNamespace: 2\n  maxNamespaces: 2\n"
        "  waves:\n  - {name: canary, namespaces: [scale-000], bakeTime: 3s}\n  - {name: rest, namespaces: ['*']}\n"
    )
    with RolloutRecorder(world.api) as recorder:
        out = _upgrader(world, env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes")
    assert out.returncode == 0, out.stderr[-3000:]

    for ns in ("shop", "edge", "payments", "scale-000", "scale-001"):
        selector = "app notin (admin, api, report, solo)"
        assert _proxies(world, ns, selector) == {"stable-2.14.10"}, ns
    assert _proxies(world, "shop", "app=api") == {"stable-2.13.7"}, "skipped: still on the old proxy"
    for what, uids in untouched.items():
        ns, sel = what.split("/")
        assert {p.metadata.uid for p in _pods(world, ns, sel)} == uids, f"{what} was touched"

    assert recorder.error is None, f"the API watch broke: {recorder.error!r}"
    print(f"\nper-namespace peak of Deployments mid-rollout (API watch): {dict(recorder.peak)}")
    data_plane = {ns: peak for ns, peak in recorder.peak.items() if ns != "linkerd"}  # helm rolls the control plane
    assert all(peak <= 2 for peak in data_plane.values()), data_plane
    assert max(recorder.peak[f"scale-00{i}"] for i in range(2)) == 2, "the throttle allowed 2 at once"
    assert "shop/admin" not in recorder.ever
    assert "legacy/batch" not in recorder.ever

    apps = client.AppsV1Api(world.api)
    created: dict[str, list[float]] = defaultdict(list)
    for rs in apps.list_replica_set_for_all_namespaces().items:
        if (rs.spec.template.metadata.annotations or {}).get("upgrader.io/restarted-by", "").startswith("run-"):
            created[rs.metadata.namespace].append(rs.metadata.creation_timestamp.timestamp())
    canary_done = max(created["scale-000"])
    others = [t for ns, ts in created.items() if ns != "scale-000" for t in ts]
    assert min(others) - canary_done >= 2, "the rest waited for the canary wave and its 3 s bake"

    events = _events(out)
    waves = [e for e in events if e["event"] == "wave"]
    assert [(w["wave"], w["workloads"]) for w in waves] == [("canary", 6), ("rest", 10)]
    assert waves[0]["proxies"] == {"stable-2.13.7": 6}, "each wave logs the proxies it starts from"
    skipped = [e["what"] for e in events if e["event"] == "not-restarted"]
    assert any("shop/api: annotated upgrader.io/skip" in s for s in skipped), skipped
    assert any(s.startswith("Pod shop/solo: bare pod") for s in skipped), skipped
    assert sum(1 for e in events if e["event"] == "restart") == 12 + 4  # scale-*, shop web/db, node-agent, ledger
    assert _checkpoint(tmp_path)["waves_done"] == ["0/0", "0/1"]


def _fragile(world: World) -> None:
    """Namespace `fragile`: a meshed Deployment pinned to a node pool; the pool then disappears, so new pods
    can never schedule (old ones keep running)."""
    node = "kwok-node-0"
    world.kubectl("label", "node", node, f"{POOL}=fragile", "--overwrite")
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "fragile",
            "labels": {"upgrader-e2e/sample": "true"},
            "annotations": {"linkerd.io/inject": "enabled"},
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "flaky", "namespace": "fragile"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "flaky"}},
            "template": {
                "metadata": {"labels": {"app": "flaky"}},
                "spec": {
                    "nodeSelector": {POOL: "fragile"},
                    "containers": [{"name": "flaky", "image": mesh.IMAGE.format(name="flaky")}],
                },
            },
        },
    }
    world.apply([ns, deployment])
    world.wait_ready(["fragile"])
    world.kubectl("label", "node", node, f"{POOL}-")


@pytest.fixture
def fragile_world(clean_world: World) -> Iterator[World]:
    yield clean_world
    clean_world.kubectl("label", "node", "kwok-node-0", f"{POOL}-")


@pytest.mark.parametrize("on_failure", ["pause", "rollback"])
def test_a_workload_that_never_becomes_ready_stops_the_waves(
    fragile_world: World, env: dict[str, str], tmp_path: Path, on_failure: str
) -> None:
    """Demonstration 3: the canary's new pods never get Ready; its gate fails within the timeout, the next wave
    never starts, and the run pauses (resumable) or rolls back (control plane and the canary's template)."""
    world = fragile_world
    world.install("stable-2.13.7")
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))
    _fragile(world)
    apps = client.AppsV1Api(world.api)
    before = {d.metadata.name: d.metadata.generation for d in apps.list_namespaced_deployment("shop").items}
    spec = tmp_path / "fragile.yaml"
    spec.write_text(
        f"name: fragile\nwaivers: [kubernetes-version]\nonFailure: {on_failure}\ngates:\n  rolloutTimeout: 15s\n"
        "dataPlane:\n  waves:\n  - {name: canary, namespaces: [fragile]}\n  - {name: rest, namespaces: ['*']}\n"
    )
    started = time.monotonic()
    out = _upgrader(world, env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes")
    assert time.monotonic() - started < 120
    assert out.returncode != 0
    assert "wave canary: health gate failed: Deployment fragile/flaky: not healthy after 15s" in out.stderr
    after = {d.metadata.name: d.metadata.generation for d in apps.list_namespaced_deployment("shop").items}
    assert after == before, "the next wave never started"
    state = _checkpoint(tmp_path)
    if on_failure == "pause":
        assert out.returncode == 1  # a failed gate is a failed step (4 is kept for preflight)
        assert (state["state"], state["stopped_in"]) == ("Failed", "RestartingDataPlane")
        assert f"upgrader resume {state['run_id']}" in out.stderr
        return
    assert state["state"] == "RolledBack"
    cm = client.CoreV1Api(world.api).read_namespaced_config_map("linkerd-config", "linkerd")
    assert "stable-2.13.7" in cm.data["values"]
    flaky = apps.read_namespaced_deployment("flaky", "fragile")
    assert "upgrader.io/restarted-by" not in (flaky.spec.template.metadata.annotations or {})
    pods = _pods(world, "fragile")
    assert [p.status.phase for p in pods] == ["Running"], "back on its old ReplicaSet; the pending pod is gone"
