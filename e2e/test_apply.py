"""`upgrader apply`, `resume`, `rollback` on the fixture world: real helm, real API, real checkpoints."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.fixtures import mesh
from e2e.fixtures.world import World
from e2e.harness.leaks import run_upgrader
from e2e.harness.waits import wait_for
from upgrader.adapters.kube_state import LeaseLock

EXEMPT = "config.linkerd.io/admission-webhooks"


@pytest.fixture
def env(clean_world: World, tmp_path: Path) -> dict[str, str]:
    """An isolated helm configuration (fixture repo added as `linkerd`) and a file state store."""
    return clean_world.helm_env(tmp_path)


def _spec(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "spec.yaml"
    # Kubernetes 1.36 is newer than any fixture major supports; payments' PDB allows no disruption.
    path.write_text("name: e2e\nwaivers: [kubernetes-version]\ndataPlane:\n  excludeNamespaces: [payments]\n" + extra)
    return path


def _history(world: World, release: str) -> list[dict[str, Any]]:
    return world.helm_history(release)


def _checkpoint(tmp_path: Path) -> dict[str, Any]:
    files = sorted((tmp_path / "state").glob("*.json"))
    assert len(files) == 1, files
    data: dict[str, Any] = json.loads(files[0].read_text())
    return data


def _with_mesh(world: World, version: str) -> None:
    world.install(version)
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))


def _no_private_key(tmp_path: Path, *texts: str) -> None:
    for path in (tmp_path / "state").glob("*"):
        assert "PRIVATE KEY" not in path.read_text(), path
    for text in texts:
        assert "PRIVATE KEY" not in text


def test_two_hops_in_one_apply(clean_world: World, env: dict[str, str], tmp_path: Path) -> None:
    """2.12.6 -> 2.14.10: two hops, CRDs before control plane in each, certificates kept, new defaults, data plane
    restarted between hops; no private key in logs or checkpoints."""
    world = clean_world
    _with_mesh(world, "stable-2.12.6")
    helm = world.helm_adapter()
    values_before = helm.get_values("linkerd-control-plane", "linkerd")

    # Two majors: payments cannot be left out, so its budget is waived (a rollout restart is not an eviction).
    spec = tmp_path / "two-hops.yaml"
    spec.write_text("name: two-hops\nwaivers: [kubernetes-version, disruption.pdb-allows-restart]\n")
    out = world.upgrader(env, "--log-format", "json", "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done" in out.stdout

    crds, cp = _history(world, "linkerd-crds"), _history(world, "linkerd-control-plane")
    assert [r["chart"] for r in crds] == ["linkerd-crds-1.4.0", "linkerd-crds-1.6.1", "linkerd-crds-1.8.0"]
    assert [r["chart"] for r in cp] == [
        "linkerd-control-plane-1.9.8",
        "linkerd-control-plane-1.12.7",
        "linkerd-control-plane-1.16.11",
    ]
    for hop in (1, 2):  # in each hop the CRDs were upgraded before the control plane
        assert crds[hop]["updated"] < cp[hop]["updated"]
    assert cp[1]["updated"] < crds[2]["updated"], "hop 2 starts after hop 1 finished"

    values_after = helm.get_values("linkerd-control-plane", "linkerd")
    for key in ("identityTrustAnchorsPEM",):
        assert values_after[key] == values_before[key]
    assert values_after["identity"]["issuer"]["tls"] == values_before["identity"]["issuer"]["tls"]
    computed = helm.get_values("linkerd-control-plane", "linkerd", all_values=True)
    assert computed["linkerdVersion"] == "stable-2.14.10", "new chart defaults, not the old linkerdVersion"

    cm = client.CoreV1Api(world.api).read_namespaced_config_map("linkerd-config", "linkerd")
    assert yaml.safe_load(cm.data["values"])["linkerdVersion"] == "stable-2.14.10"
    checkpoint = _checkpoint(tmp_path)
    assert checkpoint["state"] == "Done"
    assert {r["hop"] for r in checkpoint["restarted"]} == {0, 1}
    pods = client.CoreV1Api(world.api).list_namespaced_pod("shop", label_selector="app=web").items
    assert {c.image for p in pods for c in p.spec.containers if c.name == "linkerd-proxy"} == {
        "cr.l5d.io/linkerd/proxy:stable-2.14.10"
    }
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    states = [e["state"] for e in events if e["event"] == "state"]
    assert states.count("UpgradingCRDs") == 2
    assert states.count("RestartingDataPlane") == 2
    _no_private_key(tmp_path, out.stdout, out.stderr)

    # Roll back only hop 2: to the checkpoint taken when hop 2 started (hop 1's work stays).
    hop2 = next(m for m in checkpoint["marks"] if m["hop"] == 1 and m["state"] == "Preflight")
    shown = run_upgrader("status", checkpoint["run_id"], "--kubeconfig", str(world.kubeconfig), env=env, timeout=60)
    assert "--to-checkpoint" in shown.stdout
    assert f"{hop2['id']:>3}  " in shown.stdout, shown.stdout
    unknown = world.upgrader(env, "rollback", checkpoint["run_id"], "--to-checkpoint", "999")
    assert unknown.returncode == 2, unknown.stderr
    assert "has no checkpoint 999" in unknown.stderr
    assert len(_history(world, "linkerd-control-plane")) == 3, "a bad checkpoint id changes nothing"
    back = world.upgrader(env, "rollback", checkpoint["run_id"], "--to-checkpoint", str(hop2["id"]), "--yes")
    assert back.returncode == 0, back.stderr[-3000:]
    cp = _history(world, "linkerd-control-plane")
    assert cp[-1]["chart"] == "linkerd-control-plane-1.12.7"
    assert cp[-1]["description"].startswith("Rollback to 2")
    assert _history(world, "linkerd-crds")[-1]["chart"] == "linkerd-crds-1.8.0", "CRDs are kept"
    cm = client.CoreV1Api(world.api).read_namespaced_config_map("linkerd-config", "linkerd")
    assert yaml.safe_load(cm.data["values"])["linkerdVersion"] == "stable-2.13.7"
    wait_for(
        "shop/web back on the 2.13.7 proxy",
        lambda: (
            {
                c.image
                for p in client.CoreV1Api(world.api).list_namespaced_pod("shop", label_selector="app=web").items
                if not p.metadata.deletion_timestamp
                for c in p.spec.containers
                if c.name == "linkerd-proxy"
            }
            == {"cr.l5d.io/linkerd/proxy:stable-2.13.7"}
        ),
        timeout=60,
    )
    assert _checkpoint(tmp_path)["state"] == "RolledBack"
    _no_private_key(tmp_path, back.stdout, back.stderr)


def test_preflight_gates_each_hop_unless_waived(clean_world: World, env: dict[str, str], tmp_path: Path) -> None:
    """apply stops at preflight (exit 4, nothing changed) on a budget that cannot absorb a restart; waived, the
    data plane still never restarts against it: a bounded wait, a clear message, a paused run; fixed, it ends."""
    world = clean_world
    _with_mesh(world, "stable-2.13.7")
    world.kubectl("patch", "deployment", "ledger", "-n", "payments", "-p", json.dumps(mesh.ONE_DOWN))
    spec = tmp_path / "strict.yaml"
    spec.write_text("name: strict\nwaivers: [kubernetes-version]\n")
    out = world.upgrader(env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes")
    assert out.returncode == 4, out.stderr[-2000:]
    assert "disruption.pdb-allows-restart" in out.stderr
    assert [r["chart"] for r in _history(world, "linkerd-crds")] == ["linkerd-crds-1.6.1"], "nothing changed"
    failed = _checkpoint(tmp_path)
    assert (failed["state"], failed["stopped_in"]) == ("Failed", "Preflight")

    ledger = client.AppsV1Api(world.api).read_namespaced_deployment("ledger", "payments")
    # A second budget on ledger: the stop must name both, not only the first it meets.
    world.apply(
        [
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": "ledger-min", "namespace": "payments"},
                "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "ledger"}}},
            }
        ]
    )
    spec.write_text(
        "name: strict\nwaivers: [kubernetes-version, disruption.pdb-allows-restart]\ndataPlane:\n  pdbWaitTimeout: 5s\n"
    )
    started = time.monotonic()
    blocked = world.upgrader(env, "resume", "--spec", str(spec))
    assert blocked.returncode == 1, blocked.stderr[-2000:]  # a failed step: exit 1 (4 is preflight)
    assert time.monotonic() - started < 120, "a bounded wait, no hang"
    assert "PodDisruptionBudget payments/ledger (maxUnavailable 0) allows 0 disruption(s)" in blocked.stderr
    assert "PodDisruptionBudget payments/ledger-min (minAvailable 2)" in blocked.stderr
    assert "Deployment payments/ledger takes up to 1 pod(s) down at once" in blocked.stderr
    assert "waited 5s" in blocked.stderr
    # ledger has maxSurge 0: maxUnavailable 0 alone would be rejected by the API.
    assert "maxSurge to at least 1 and maxUnavailable to 0" in blocked.stderr
    apps = client.AppsV1Api(world.api)
    others = [apps.read_namespaced_deployment(n, "shop") for n in ("web", "api")]
    others.append(apps.read_namespaced_stateful_set("db", "shop"))
    went_on = ["upgrader.io/restarted-by" in (o.spec.template.metadata.annotations or {}) for o in others]
    assert all(went_on), "the workloads the budgets do not block went on"
    paused = _checkpoint(tmp_path)
    assert (paused["state"], paused["stopped_in"]) == ("Failed", "RestartingDataPlane")
    after = client.AppsV1Api(world.api).read_namespaced_deployment("ledger", "payments")
    assert after.metadata.generation == ledger.metadata.generation, "ledger was not restarted against its budget"

    world.kubectl(
        "patch",
        "deployment",
        "ledger",
        "-n",
        "payments",
        "-p",
        '{"spec":{"strategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}',
    )
    resumed = world.upgrader(env, "resume", "--spec", str(spec))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _checkpoint(tmp_path)["state"] == "Done"


def test_a_second_run_is_refused_while_the_first_holds_the_lock(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """With the installation Lease held by another run, apply exits 3 naming that run and changes nothing."""
    world = clean_world
    world.install("stable-2.13.7")
    lock = LeaseLock(world.api, "linkerd", "linkerd")
    lock.acquire("alice@ci-runner:4242/run-other", dt.datetime.now(dt.UTC))
    try:
        out = world.upgrader(env, "apply", "--to", "stable-2.14.10", "--spec", str(_spec(tmp_path)), "--yes")
    finally:
        lock.release("alice@ci-runner:4242/run-other")
    assert out.returncode == 3, out.stderr[-2000:]
    assert "alice@ci-runner:4242/run-other" in out.stderr
    assert [r["chart"] for r in _history(world, "linkerd-control-plane")] == ["linkerd-control-plane-1.12.7"]


def test_killed_during_the_control_plane_step_resumes_without_redoing_steps(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL while the control plane upgrades; resume finishes the run; each chart was upgraded once."""
    world = clean_world
    _with_mesh(world, "stable-2.13.7")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "upgrader",
            "apply",
            "--to",
            "stable-2.14.10",
            "--spec",
            str(_spec(tmp_path)),
            "--yes",
            "--kubeconfig",
            str(world.kubeconfig),
            "--helm",
            str(world.helm),
        ],
        env=env,
        stdout=(tmp_path / "killed-apply.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            "the run to enter UpgradingControlPlane",
            lambda: any(
                json.loads(p.read_text()).get("state") == "UpgradingControlPlane"
                for p in (tmp_path / "state").glob("*.json")
            ),
            timeout=120,
            interval=0.05,
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    time.sleep(2)  # a helm child started before the kill may still finish its upgrade
    killed = _checkpoint(tmp_path)
    assert killed["state"] == "UpgradingControlPlane"
    out = world.upgrader(env, "resume", "--take-over-lock")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _checkpoint(tmp_path)["state"] == "Done"
    assert [r["chart"] for r in _history(world, "linkerd-crds")] == ["linkerd-crds-1.6.1", "linkerd-crds-1.8.0"]
    charts = [r["chart"] for r in _history(world, "linkerd-control-plane")]
    assert charts == ["linkerd-control-plane-1.12.7", "linkerd-control-plane-1.16.11"], charts


def test_a_control_plane_that_never_becomes_ready_is_rolled_back(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """on_failure: rollback returns the control plane to its starting revision and version."""
    world = clean_world
    world.install("stable-2.13.7")
    spec = _spec(
        tmp_path,
        "onFailure: rollback\ngates:\n  rolloutTimeout: 20s\nvalues:\n  overrides:\n"
        "    nodeSelector:\n      upgrader-e2e/none: 'true'\n",
    )
    out = world.upgrader(env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes")
    assert out.returncode != 0
    assert "rolled back" in out.stderr
    checkpoint = _checkpoint(tmp_path)
    assert checkpoint["state"] == "RolledBack"
    history = _history(world, "linkerd-control-plane")
    assert history[-1]["chart"] == "linkerd-control-plane-1.12.7"
    assert history[-1]["status"] == "deployed"
    assert "Rollback to 1" in history[-1]["description"]
    cm = client.CoreV1Api(world.api).read_namespaced_config_map("linkerd-config", "linkerd")
    assert yaml.safe_load(cm.data["values"])["linkerdVersion"] == "stable-2.13.7"
    _no_private_key(tmp_path, out.stdout, out.stderr)
