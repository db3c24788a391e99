"""Pinned proxy versions on the fixture world: refused before anything changes, or reported and never waited for."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.fixtures.world import World
from e2e.harness.leaks import run_upgrader

NS = "pins"
DIGEST_IMAGE = "cr.l5d.io/linkerd/proxy@sha256:" + "ab" * 32


def _deployment(name: str, *, annotations: dict[str, str] | None = None, proxy: bool = False) -> dict[str, Any]:
    labels = {"app": name}
    containers: list[dict[str, Any]] = [{"name": name, "image": f"registry.example/{name}:1"}]
    if proxy:  # injected by hand (`linkerd inject --manual`), the proxy image pinned by digest
        labels["linkerd.io/control-plane-ns"] = "linkerd"
        containers.append({"name": "linkerd-proxy", "image": DIGEST_IMAGE})
    meta: dict[str, Any] = {"labels": labels, "annotations": annotations or {}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": meta, "spec": {"containers": containers}},
        },
    }


def _world(world: World) -> None:
    world.install("stable-2.13.7")
    world.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                # labelled as a sample namespace so World.reset removes it after the test
                "metadata": {
                    "name": NS,
                    "labels": {"upgrader-e2e/sample": "true"},
                    "annotations": {"linkerd.io/inject": "enabled"},
                },
            },
            _deployment("free"),
            _deployment("held", annotations={"config.linkerd.io/proxy-version": "stable-2.13.7"}),
            _deployment("dig", annotations={"linkerd.io/inject": "disabled"}, proxy=True),
        ]
    )
    world.wait_ready([NS])


def _spec(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text("name: pins\nwaivers: [kubernetes-version]\n" + extra)
    return path


def _templates(world: World) -> dict[str, dict[str, str]]:
    apps: Any = client.AppsV1Api(world.api)
    return {
        d.metadata.name: dict(d.spec.template.metadata.annotations or {})
        for d in apps.list_namespaced_deployment(NS).items
    }


def _revisions(world: World) -> dict[str, int]:
    return {r.name: r.revision for r in world.helm_adapter().list_releases()}


def test_pins_are_refused_by_default_then_reported_under_pins_report(clean_world: World, tmp_path: Path) -> None:
    """Default policy: plan and apply exit 3 naming both pins and nothing changes. `pins: report`: apply ends
    Done without waiting, the pinned and the digest-pinned workload are reported pinned (apply, status), only
    the free workload is restarted."""
    world = clean_world
    env = world.helm_env(tmp_path)
    _world(world)
    common = ("--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm))
    before, templates = _revisions(world), _templates(world)

    refusing = ("--spec", str(_spec(tmp_path)))
    planned = run_upgrader("plan", "--to", "stable-2.14.10", *refusing, *common, env=env)
    assert planned.returncode == 3, planned.stdout + planned.stderr
    assert "pinned-versions" in planned.stdout
    for text in (f"Deployment {NS}/held", f"Deployment {NS}/dig", "sha256:" + "ab" * 32, "pins: report"):
        assert text in planned.stdout
    as_json = run_upgrader("plan", "--to", "stable-2.14.10", "-o", "json", *refusing, *common, env=env)
    pins = json.loads(as_json.stdout)["pins"]
    assert sorted((p["name"], p["source"]) for p in pins) == [
        ("dig", "proxy image digest"),
        ("held", "pod template annotation config.linkerd.io/proxy-version"),
    ]

    refused = run_upgrader("apply", "--to", "stable-2.14.10", "--yes", *refusing, *common, env=env)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert f"Deployment {NS}/held" in refused.stdout
    assert _revisions(world) == before, "a refused apply changed no release"
    assert _templates(world) == templates, "a refused apply restarted nothing"

    spec = tmp_path / "report.yaml"
    spec.write_text("name: pins\nwaivers: [kubernetes-version]\npins: report\ngates:\n  rolloutTimeout: 10m\n")
    started = time.monotonic()
    applied = run_upgrader(
        "--log-format", "json", "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes", *common, env=env
    )
    took = time.monotonic() - started
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Done" in applied.stdout
    assert f"pinned: Deployment {NS}/held" in applied.stdout
    assert f"pinned: Deployment {NS}/dig" in applied.stdout
    events = [json.loads(line) for line in applied.stderr.splitlines() if line.startswith("{")]
    assert sorted(e["workload"] for e in events if e.get("event") == "workload-pinned") == [
        f"Deployment {NS}/dig",
        f"Deployment {NS}/held",
    ]
    passed = [e["workload"] for e in events if e.get("event") == "workload-passed"]
    assert f"Deployment {NS}/free" in passed
    assert not [w for w in passed if w.endswith(("/held", "/dig"))], "a pinned workload is never 'passed'"
    assert took < 600, "nothing waited for the 10m rollout timeout"

    after = _templates(world)
    assert "upgrader.io/restarted-by" in after["free"]
    assert "upgrader.io/restarted-by" not in after["held"]
    assert "upgrader.io/restarted-by" not in after["dig"]

    status = run_upgrader("status", "--kubeconfig", str(world.kubeconfig), env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    assert f"pinned: Deployment {NS}/held" in status.stdout
    assert f"pinned: Deployment {NS}/dig" in status.stdout
