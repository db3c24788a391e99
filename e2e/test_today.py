"""Today's Linkerd on the fixture world: stable-2.14.10 to 2.20 through the edge releases (real helm, real API).

- one unattended ``apply`` of the six hops stable-2.14.10 -> edge-26.6.3 with an HTTPRoute that
  survives every hop, then a rollback of the last hop (native sidecars back to a proxy container);
- Gateway API CRDs installed from outside Linkerd stay untouched across 2.18 -> 2.19;
- ``gatewayAPI: external`` hands Linkerd's CRDs over at 2.18 -> 2.19, kept in the cluster;
- the jaeger extension refuses a hop into 2.19 until it is uninstalled.

The local cluster runs Kubernetes 1.36, newer than every fixture major's maximum: each spec waives
the ``kubernetes-version`` check, as the other e2e tests do.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.fixtures.charts import FOREIGN_GATEWAY_API_BUNDLE, FOREIGN_GATEWAY_API_NAMESPACE, FOREIGN_GATEWAY_API_RELEASE
from e2e.fixtures.world import JAEGER_NAMESPACE, NO_GATEWAY_API, World
from e2e.harness.leaks import run_upgrader
from e2e.harness.waits import wait_for

SPEC = "name: today\nwaivers: [kubernetes-version]\n"  # Kubernetes 1.36 is newer than any fixture major supports
ROUTES = [f"{r}.gateway.networking.k8s.io" for r in ("httproutes", "grpcroutes", "tlsroutes", "tcproutes")]
PATH = ["stable-2.14.10", "edge-24.2.4", "edge-24.8.2", "edge-24.11.8", "edge-25.4.4", "edge-25.10.7", "edge-26.6.3"]
CRDS_CHARTS = ["1.8.0", "1.9.4-edge", "2024.8.2", "2024.11.8", "2025.4.4", "2025.10.7", "2026.6.3"]
CP_CHARTS = ["1.16.11", "1.18.10-edge", "2024.8.2", "2024.11.8", "2025.4.4", "2025.10.7", "2026.6.3"]


@pytest.fixture
def env(clean_world: World, tmp_path: Path) -> dict[str, str]:
    """An isolated helm configuration (fixture repo added as `linkerd`) and a file state store."""
    return clean_world.helm_env(tmp_path)


def _spec(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC + extra)
    return path


def _upgrader(world: World, env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return run_upgrader(
        *args, "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm), env=env, timeout=timeout
    )


def _checkpoint(tmp_path: Path) -> dict[str, Any]:
    files = sorted((tmp_path / "state").glob("*.json"))
    assert len(files) == 1, files
    data: dict[str, Any] = json.loads(files[0].read_text())
    return data


def _manifest(world: World, release: str, namespace: str = "linkerd") -> str:
    out = subprocess.run(
        [str(world.helm), "get", "manifest", release, "-n", namespace, "--kubeconfig", str(world.kubeconfig)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def _small_mesh(world: World) -> None:
    """One meshed namespace ``today`` with one Deployment ``web`` (one pod) and its Service: few pods to restart."""
    labels = {"upgrader-e2e/sample": "true"}
    world.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": "today", "labels": labels, "annotations": {"linkerd.io/inject": "enabled"}},
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "today"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "today"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "web", "image": "registry.example/sample/web:1.0"}]},
                    },
                },
            },
        ]
    )
    world.wait_ready(["today"])


def _proxies(world: World) -> list[tuple[str, str, str | None]]:
    """The live web pods' proxies: (where: container or init, image tag, init restartPolicy)."""
    pods = client.CoreV1Api(world.api).list_namespaced_pod("today", label_selector="app=web").items
    out = []
    for pod in pods:
        if pod.metadata.deletion_timestamp is not None:
            continue
        for c in pod.spec.containers:
            if c.name == "linkerd-proxy":
                out.append(("container", c.image.rsplit(":", 1)[1], None))
        for c in pod.spec.init_containers or []:
            if c.name == "linkerd-proxy":
                out.append(("init", c.image.rsplit(":", 1)[1], c.restart_policy))
    return out


def _route_exists(world: World) -> bool:
    custom = client.CustomObjectsApi(world.api)
    try:
        custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1beta1", "today", "httproutes", "web-route")
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_stable_2_14_to_2_20_in_one_apply_then_the_last_hop_rolled_back(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """Six hops in one unattended apply, CRDs before the control plane in each, the data plane restarted after
    each, an HTTPRoute kept throughout; the Gateway API CRDs stay with linkerd-crds; every hop's values diff is
    kept; 2.20's proxies are native sidecars. Then one hop back: a regular proxy container, CRDs kept."""
    world = clean_world
    world.install("stable-2.14.10")
    _small_mesh(world)
    world.create_sample_http_route("today")
    assert _route_exists(world)
    spec = _spec(tmp_path)

    out = _upgrader(world, env, "apply", "--to", "edge-26.6.3", "--spec", str(spec), "--yes")
    assert out.returncode == 0, out.stderr[-4000:]
    done = _checkpoint(tmp_path)
    assert done["state"] == "Done", done["errors"]
    assert [h["to"] for h in done["plan"]["hops"]] == PATH[1:]

    crds, cp = world.helm_history("linkerd-crds"), world.helm_history("linkerd-control-plane")
    assert [r["chart"] for r in crds] == [f"linkerd-crds-{v}" for v in CRDS_CHARTS]
    assert [r["chart"] for r in cp] == [f"linkerd-control-plane-{v}" for v in CP_CHARTS]
    for hop in range(1, 7):  # every hop went through helm, linkerd-crds first
        assert crds[hop]["updated"] < cp[hop]["updated"], hop
        if hop > 1:
            assert cp[hop - 1]["updated"] < crds[hop]["updated"], f"hop {hop} starts after hop {hop - 1} finished"
    assert {r["hop"] for r in done["restarted"]} == set(range(6)), "the data plane restarted after every hop"
    assert _route_exists(world), "the HTTPRoute survived every hop"

    gateway = world.gateway_api_crds()
    assert sorted(gateway) == sorted(ROUTES)
    for name, crd in gateway.items():  # auto keeps them with linkerd-crds (installGatewayAPI: true from 2.18)
        assert (crd["release"], crd["chart"]) == ("linkerd-crds", "linkerd-crds-2026.6.3"), (name, crd)
    assert world.helm_adapter().get_values("linkerd-crds", "linkerd").get("installGatewayAPI") is True
    manifest = _manifest(world, "linkerd-crds")
    for name in ROUTES:
        assert f"name: {name}" in manifest, name

    status = run_upgrader(
        "status", done["run_id"], "-o", "json", "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm),
        env=env, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr[-2000:]
    shown = json.loads(status.stdout)
    assert shown["state"] == "Done"
    diffs = shown["values_diffs"]
    for hop in range(6):
        assert f"{hop}/linkerd-control-plane" in diffs, (hop, sorted(diffs))
    assert any(diffs[f"{hop}/linkerd-control-plane"] for hop in range(5)), "not only the last hop's diff"

    proxies = _proxies(world)
    assert proxies == [("init", "edge-26.6.3", "Always")], proxies

    # One hop back: edge-25.10.7's control plane, a regular proxy container, the Gateway API CRDs kept.
    back = _upgrader(world, env, "rollback", done["run_id"], "--yes")
    assert back.returncode == 0, back.stderr[-4000:]
    assert _checkpoint(tmp_path)["state"] == "RolledBack"
    cp = world.helm_history("linkerd-control-plane")
    assert cp[-1]["chart"] == "linkerd-control-plane-2025.10.7"
    assert cp[-1]["description"].startswith("Rollback to"), cp[-1]
    assert world.helm_history("linkerd-crds")[-1]["chart"] == "linkerd-crds-2026.6.3", "CRDs are kept"
    world.wait_control_plane("linkerd")
    wait_for(
        "today/web back on a regular 2.19 proxy container",
        lambda: _proxies(world) == [("container", "edge-25.10.7", None)],
        timeout=120,
    )
    after = world.gateway_api_crds()
    assert after == gateway, "the Gateway API CRDs were neither deleted nor downgraded"
    assert _route_exists(world)


def test_foreign_gateway_api_crds_stay_untouched_across_2_18_to_2_19(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """Gateway API CRDs from their own Helm release: the 2.19 hop names them as left untouched and keeps them."""
    world = clean_world
    assert world.install_foreign_gateway_api() == FOREIGN_GATEWAY_API_BUNDLE
    world.install("edge-25.4.4", crds_values=NO_GATEWAY_API)
    before = world.gateway_api_crds()
    assert {c["release"] for c in before.values()} == {FOREIGN_GATEWAY_API_RELEASE}
    spec = _spec(tmp_path)

    plan = _upgrader(world, env, "plan", "--to", "edge-25.10.7", "--spec", str(spec), "-o", "json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    planned = json.loads(plan.stdout)
    (hop,) = planned["hops"]
    (note,) = [n["text"] for n in hop["notes"] if n["text"].startswith("Gateway API CRDs (gatewayAPI: auto)")]
    for name in ROUTES:
        short = name.split(".", 1)[0]
        assert f"{short} (Helm release {FOREIGN_GATEWAY_API_NAMESPACE}/{FOREIGN_GATEWAY_API_RELEASE}" in note, note
    assert note.count("left untouched") == 4, note
    assert all(v is False for v in hop["crds_values"].values()), hop["crds_values"]

    out = _upgrader(world, env, "apply", "--to", "edge-25.10.7", "--spec", str(spec), "--yes")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _checkpoint(tmp_path)["state"] == "Done"
    assert world.helm_history("linkerd-crds")[-1]["chart"] == "linkerd-crds-2025.10.7"
    after = world.gateway_api_crds()
    assert after == before, "owner, bundle, versions and the objects themselves unchanged"
    owner = (FOREIGN_GATEWAY_API_RELEASE, FOREIGN_GATEWAY_API_NAMESPACE)
    for crd in after.values():
        assert crd["bundle"] == FOREIGN_GATEWAY_API_BUNDLE
        assert (crd["release"], crd["release_namespace"]) == owner
    assert "gateway.networking.k8s.io" not in _manifest(world, "linkerd-crds")


def test_external_hands_linkerds_gateway_api_crds_over_at_2_19_and_keeps_them(
    clean_world: World, env: dict[str, str], tmp_path: Path
) -> None:
    """gatewayAPI: external with linkerd-crds managing the CRDs at 2.18: the plan warns of the hand-over naming
    each CRD; after the hop they are still in the cluster, no longer in linkerd-crds' manifest."""
    world = clean_world
    world.install("edge-25.4.4")
    before = world.gateway_api_crds()
    assert sorted(before) == sorted(ROUTES)
    assert {c["release"] for c in before.values()} == {"linkerd-crds"}
    spec = _spec(tmp_path, "gatewayAPI: external\n")

    plan = _upgrader(world, env, "plan", "--to", "edge-25.10.7", "--spec", str(spec), "-o", "json")
    assert plan.returncode == 0, plan.stderr[-3000:]
    warnings = json.loads(plan.stdout)["warnings"]
    for name in ROUTES:
        assert any(name in w and "hands" in w for w in warnings), (name, warnings)

    out = _upgrader(world, env, "apply", "--to", "edge-25.10.7", "--spec", str(spec), "--yes")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _checkpoint(tmp_path)["state"] == "Done"
    assert "handed over" in out.stdout + out.stderr, "the run reports the hand-over"
    after = world.gateway_api_crds()
    assert sorted(after) == sorted(ROUTES), "kept in the cluster (helm.sh/resource-policy: keep)"
    for name, crd in after.items():
        assert crd["uid"] == before[name]["uid"], name
        assert crd["bundle"] == before[name]["bundle"], name
        assert crd["keep"], name
    assert "gateway.networking.k8s.io" not in _manifest(world, "linkerd-crds"), "no longer managed by linkerd-crds"


def test_jaeger_refuses_the_2_19_hop_until_uninstalled(clean_world: World, env: dict[str, str], tmp_path: Path) -> None:
    """linkerd-jaeger at 2.18: plan and apply into 2.19 exit 3 naming the uninstall command, changing nothing;
    after uninstalling it the plan is accepted."""
    world = clean_world
    world.install("edge-25.4.4")
    world.install_jaeger("edge-25.4.4", wait=False)
    spec = _spec(tmp_path)
    histories = {r: world.helm_history(r) for r in ("linkerd-crds", "linkerd-control-plane")}
    uninstall = f"helm uninstall linkerd-jaeger -n {JAEGER_NAMESPACE}"

    plan = _upgrader(world, env, "plan", "--to", "edge-25.10.7", "--spec", str(spec))
    said = " ".join((plan.stdout + plan.stderr).split())  # the terminal output wraps long lines
    assert plan.returncode == 3, said[-3000:]
    assert "REFUSED (extension-removed)" in said, said[-3000:]
    assert uninstall in said, said[-3000:]
    applied = _upgrader(world, env, "apply", "--to", "edge-25.10.7", "--spec", str(spec), "--yes")
    said = " ".join((applied.stdout + applied.stderr).split())
    assert applied.returncode == 3, said[-3000:]
    assert uninstall in said, said[-3000:]
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").glob("*.json")), "no run started"
    assert {r: world.helm_history(r) for r in histories} == histories, "nothing changed"

    world.uninstall_jaeger()
    accepted = _upgrader(world, env, "plan", "--to", "edge-25.10.7", "--spec", str(spec), "-o", "json")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    planned = json.loads(accepted.stdout)
    assert planned["refused"] is None
    assert [h["to"] for h in planned["hops"]] == ["edge-25.10.7"]
