"""Interrupted runs: SIGKILL at five points, then `resume` reaches the same end state without repeating steps;
a failing control plane with `on_failure: pause` leaves a resumable checkpoint; nothing stores the issuer key."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.fixtures import mesh
from e2e.fixtures.world import World
from e2e.harness.leaks import run_upgrader
from e2e.harness.waits import wait_for

SPEC = "name: e2e\nwaivers: [kubernetes-version, disruption.pdb-allows-restart]\n"


@pytest.fixture
def env(clean_world: World, tmp_path: Path) -> dict[str, str]:
    """Isolated helm configuration with the fixture repository; a file state store in tmp_path/state."""
    return clean_world.helm_env(tmp_path)


def _cli(world: World, *args: str) -> list[str]:
    return [sys.executable, "-m", "upgrader", *_args(world, *args)]


def _args(world: World, *args: str) -> list[str]:
    return [*args, "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm)]


def _charts(world: World, release: str) -> list[str]:
    return [r["chart"] for r in world.helm_history(release)]


def _state(tmp_path: Path) -> dict[str, Any] | None:
    for path in (tmp_path / "state").glob("*.json"):
        try:
            loaded: dict[str, Any] = json.loads(path.read_text())
        except ValueError:
            return None
        return loaded
    return None


def _generations(world: World) -> dict[str, int]:
    apps = client.AppsV1Api(world.api)
    return {
        f"{d.metadata.namespace}/{d.metadata.name}": d.metadata.generation
        for ns in ("shop", "payments")
        for d in apps.list_namespaced_deployment(ns).items
        if (d.spec.template.metadata.annotations or {}).get("linkerd.io/inject") != "disabled"
    }


@pytest.mark.parametrize(
    ("start", "target", "state", "hop"),
    [
        pytest.param("stable-2.13.7", "stable-2.14.10", "UpgradingCRDs", 0, id="during CRDs"),
        pytest.param(
            "stable-2.13.7", "stable-2.14.10", "UpgradingControlPlane", 0, id="between CRDs and control plane"
        ),
        pytest.param("stable-2.13.7", "stable-2.14.10", "VerifyingControlPlane", 0, id="during control-plane wait"),
        pytest.param("stable-2.12.6", "stable-2.14.10", "Preflight", 1, id="between hops"),
        pytest.param("stable-2.13.7", "stable-2.14.10", "RestartingDataPlane", 0, id="during data plane"),
    ],
)
def test_sigkill_then_resume_reaches_the_same_end_without_repeating_steps(
    clean_world: World, env: dict[str, str], tmp_path: Path, start: str, target: str, state: str, hop: int
) -> None:
    """Killed at `state`, the run resumes to Done: each chart upgraded once per hop, each workload restarted
    once per hop, every meshed pod on the target proxy."""
    world = clean_world
    world.install(start)
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))
    before = _generations(world)
    assert "shop/admin" not in before, "opted-out workloads are never restarted"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    proc = subprocess.Popen(
        _cli(world, "apply", "--to", target, "--spec", str(spec), "--yes"),
        env=env,
        stdout=(tmp_path / "killed-apply.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            f"the run to reach {state} of hop {hop + 1}",
            lambda: (cp := _state(tmp_path)) is not None and cp["state"] == state and cp["hop"] == hop,
            timeout=180,
            interval=0.02,
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    time.sleep(2)  # a helm child started before the kill may still be finishing
    killed = _state(tmp_path)
    assert killed is not None
    assert killed["state"] not in ("Done", "Failed")

    out = run_upgrader(*_args(world, "resume", "--take-over-lock"), env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    final = _state(tmp_path)
    assert final is not None
    assert final["state"] == "Done"

    hops = len(final["plan"]["hops"])
    crds, cp = _charts(world, "linkerd-crds"), _charts(world, "linkerd-control-plane")
    assert len(crds) == len(cp) == hops + 1, (crds, cp)  # install + one upgrade per hop, none twice
    assert cp[-1] == "linkerd-control-plane-1.16.11"
    after = _generations(world)
    for name, generation in before.items():
        assert after[name] == generation + hops, f"{name} restarted {after[name] - generation} times in {hops} hop(s)"
    proxies = {
        c.image
        for p in client.CoreV1Api(world.api).list_namespaced_pod("shop").items
        for c in p.spec.containers
        if c.name == "linkerd-proxy"
    }
    assert proxies == {"cr.l5d.io/linkerd/proxy:stable-2.14.10"}


def test_failed_control_plane_with_pause_leaves_a_resumable_checkpoint_in_the_cluster(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """on_failure: pause stops in UpgradingControlPlane (exit 1: a failed step) with resume/rollback hints;
    the checkpoint is a Secret (kubernetes: store) without key material; rollback then restores the start."""
    world = clean_world
    world.install("stable-2.13.7")
    core = client.CoreV1Api(world.api)
    core.create_namespace({"metadata": {"name": "upgrader-state"}})
    env = dict(env, UPGRADER_STATE_STORE="kubernetes:upgrader-state")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        SPEC + "onFailure: pause\ngates:\n  rolloutTimeout: 20s\nvalues:\n  overrides:\n"
        "    nodeSelector:\n      upgrader-e2e/none: 'true'\n"
    )
    out = run_upgrader(
        *_args(world, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes"), env=env, timeout=300
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert "upgrader resume run-" in out.stderr
    secrets = core.list_namespaced_secret("upgrader-state", label_selector="upgrader.io/run=true").items
    assert len(secrets) == 1
    checkpoint = json.loads(base64.b64decode(secrets[0].data["checkpoint.json"]))
    assert (checkpoint["state"], checkpoint["stopped_in"]) == ("Failed", "UpgradingControlPlane")
    for text in (base64.b64decode(secrets[0].data["checkpoint.json"]).decode(), out.stdout, out.stderr):
        assert "PRIVATE KEY" not in text

    status = run_upgrader("status", "--kubeconfig", str(world.kubeconfig), env=env, timeout=60)
    assert f"upgrader resume {checkpoint['run_id']}" in status.stdout
    rolled = run_upgrader(*_args(world, "rollback", checkpoint["run_id"], "--yes"), env=env, timeout=300)
    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert _charts(world, "linkerd-control-plane")[-1] == "linkerd-control-plane-1.12.7"
    core.delete_namespace("upgrader-state")
