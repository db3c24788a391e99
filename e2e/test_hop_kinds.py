"""Every kind of hop `plan` makes, run by `apply` on the local cluster with real helm.

- a `linkerd2`-chart hop (2.10 -> 2.11), the 2.12 chart split adopting the linkerd2 release's
  objects, and two more hops, in one apply from stable-2.10.2 to stable-2.14.10;
- a data-plane catch-up hop when proxies start one major behind the control plane;
- a run frozen (SIGSTOP) while another holder takes its Lease stops without acting when it wakes.

(`upgrade` and `rollback` hops run in e2e/test_apply.py.)
"""

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
from e2e.harness.waits import wait_for

SPEC = "name: e2e\nwaivers: [kubernetes-version]\ndataPlane:\n  excludeNamespaces: [payments]\n"


@pytest.fixture
def env(clean_world: World, tmp_path: Path) -> dict[str, str]:
    return clean_world.helm_env(tmp_path)


def _checkpoint(tmp_path: Path) -> dict[str, Any]:
    files = sorted((tmp_path / "state").glob("*.json"))
    assert len(files) == 1, files
    data: dict[str, Any] = json.loads(files[0].read_text())
    return data


def _proxies(world: World, namespace: str) -> set[str]:
    pods = client.CoreV1Api(world.api).list_namespaced_pod(namespace).items
    return {
        c.image.rsplit(":", 1)[1]
        for p in pods
        if p.status.phase == "Running"
        for c in p.spec.containers
        if c.name == "linkerd-proxy"
    }


def _config_version(world: World) -> str:
    cm = client.CoreV1Api(world.api).read_namespaced_config_map("linkerd-config", "linkerd")
    return str(yaml.safe_load(cm.data["values"])["linkerdVersion"])


def _with_mesh(world: World, version: str) -> None:
    world.install(version)
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))


def test_linkerd2_hop_then_the_chart_split_then_two_hops_to_done(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """stable-2.10.2 -> stable-2.14.10: linkerd2 2.10 -> 2.11, the split adopting its objects, 2.13, 2.14."""
    world = clean_world
    _with_mesh(world, "stable-2.10.2")
    spec = tmp_path / "spec.yaml"
    # every meshed namespace in the waves: four majors on, none may be left behind (data-plane-skew)
    spec.write_text("name: e2e\nwaivers: [kubernetes-version]\nacknowledge: [chart-split-2.12]\n")
    plan = world.upgrader(env, "plan", "--to", "stable-2.14.10", "--spec", str(spec), "-o", "json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    kinds = [(h["kind"], h["to"]) for h in json.loads(plan.stdout)["hops"]]
    assert kinds == [
        ("linkerd2-upgrade", "stable-2.11.5"),
        ("chart-split", "stable-2.12.6"),
        ("upgrade", "stable-2.13.7"),
        ("upgrade", "stable-2.14.10"),
    ]
    out = world.upgrader(env, "apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes")
    assert out.returncode == 0, out.stderr[-4000:]
    done = _checkpoint(tmp_path)
    assert done["state"] == "Done", done["errors"]
    assert _config_version(world) == "stable-2.14.10"
    releases = {(r.name, r.namespace): r for r in world.helm_adapter().list_releases()}
    assert ("linkerd2", "default") not in releases, "the linkerd2 release record is removed"
    assert releases[("linkerd-crds", "linkerd")].chart_version == "1.8.0"
    assert releases[("linkerd-control-plane", "linkerd")].chart_version == "1.16.11"
    crd = client.ApiextensionsV1Api(world.api).read_custom_resource_definition("serviceprofiles.linkerd.io")
    assert crd.metadata.annotations["meta.helm.sh/release-name"] == "linkerd-crds"
    assert _proxies(world, "shop") == {"stable-2.14.10"}
    assert done["releases"]["linkerd2"]["before"] == 1
    # the certificates travelled through every hop: the issuer the run started with still signs
    assert "identityTrustAnchorsPEM" in world.helm_adapter().get_values("linkerd-control-plane", "linkerd")
    again = world.upgrader(env, "plan", "--to", "stable-2.14.10", "--spec", str(spec), "-o", "json")
    assert json.loads(again.stdout)["hops"] == [], "after the run there is nothing left to do"


def test_a_data_plane_one_major_behind_is_caught_up_first(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """Control plane moved to 2.13 by plain helm, proxies left on 2.12: the plan is one data-plane hop."""
    world = clean_world
    _with_mesh(world, "stable-2.12.6")
    helm = world.helm_adapter()
    helm.upgrade("linkerd-crds", "linkerd-crds", "linkerd", {}, version="1.6.1", repo=world.repo_url)
    values = helm.get_values("linkerd-control-plane", "linkerd")
    values.pop("linkerdVersion", None)  # as an operator upgrading by hand must (else helm keeps 2.12.6)
    helm.upgrade(
        "linkerd-control-plane",
        "linkerd-control-plane",
        "linkerd",
        values,
        version="1.12.7",
        repo=world.repo_url,
        reset_values=True,
    )
    wait_for("linkerd-config at 2.13.7", lambda: _config_version(world) == "stable-2.13.7", timeout=120)
    world.wait_control_plane("linkerd")
    assert _proxies(world, "shop") == {"stable-2.12.6"}
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    plan = world.upgrader(env, "plan", "--to", "stable-2.13.7", "--spec", str(spec), "-o", "json")
    assert [h["kind"] for h in json.loads(plan.stdout)["hops"]] == ["data-plane"], plan.stdout[-2000:]
    out = world.upgrader(env, "apply", "--to", "stable-2.13.7", "--spec", str(spec), "--yes")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _checkpoint(tmp_path)["state"] == "Done"
    assert _proxies(world, "shop") == {"stable-2.13.7"}
    assert [r.chart for r in helm.history("linkerd-control-plane", "linkerd")][-1] == "linkerd-control-plane-1.12.7"
    again = world.upgrader(env, "plan", "--to", "stable-2.13.7", "--spec", str(spec))
    assert "nothing to do" in again.stdout, again.stdout[-2000:]


def test_a_frozen_run_that_lost_its_lock_wakes_up_and_stops_without_acting(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """SIGSTOP during the canary's bake; another holder takes the Lease; SIGCONT: the run stops with
    "lock lost to ...", restarts nothing more, writes no checkpoint and never re-creates its Lease."""
    world = clean_world
    _with_mesh(world, "stable-2.13.7")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        SPEC
        + "  waves:\n    - {name: canary, namespaces: [shop], bakeTime: 90s}\n    - {name: rest, namespaces: ['*']}\n"
    )
    log = (tmp_path / "frozen-apply.log").open("w")
    args = ["apply", "--to", "stable-2.14.10", "--spec", str(spec), "--yes"]
    args += ["--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm)]
    proc = subprocess.Popen([sys.executable, "-m", "upgrader", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    apps = client.AppsV1Api(world.api)
    try:

        def in_bake() -> bool:
            files = list((tmp_path / "state").glob("*.json"))
            if not files:
                return False
            cp = json.loads(files[0].read_text())
            return cp["state"] == "RestartingDataPlane" and any(r["namespace"] == "shop" for r in cp["restarted"])

        wait_for("the canary wave restarted", in_bake, timeout=300, interval=0.2)
        wait_for("shop on the new proxy", lambda: _proxies(world, "shop") == {"stable-2.14.10"}, timeout=120)
        time.sleep(2)  # the canary's gate passed: the run is baking
        os.kill(proc.pid, signal.SIGSTOP)
        before = _checkpoint(tmp_path)
        generations = {d.metadata.name: d.metadata.generation for d in apps.list_namespaced_deployment("edge").items}
        coordination = client.CoordinationV1Api(world.api)
        lease = coordination.read_namespaced_lease("upgrader-lock-linkerd", "linkerd")
        lease.spec.holder_identity = "other@elsewhere:1/run-other"
        lease.spec.renew_time = dt.datetime.now(dt.UTC)
        coordination.replace_namespaced_lease("upgrader-lock-linkerd", "linkerd", lease)
        os.kill(proc.pid, signal.SIGCONT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "frozen-apply.log").read_text()
    assert code == 3, text[-3000:]
    assert "lock lost to other@elsewhere:1/run-other" in text
    after = {d.metadata.name: d.metadata.generation for d in apps.list_namespaced_deployment("edge").items}
    assert after == generations, "the woken run restarted nothing more"
    assert _checkpoint(tmp_path)["updated_at"] == before["updated_at"], "no checkpoint written after the loss"
    holder = coordination.read_namespaced_lease("upgrader-lock-linkerd", "linkerd").spec.holder_identity
    assert holder == "other@elsewhere:1/run-other", "the Lease was neither re-created nor released by the loser"
