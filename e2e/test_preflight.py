"""`upgrader preflight` on the fixture world: healthy passes; each hazard is caught by id with exit code 4."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.fixtures import mesh
from e2e.fixtures.identity import make_identity
from e2e.fixtures.world import World
from e2e.harness.leaks import run_upgrader
from e2e.harness.waits import wait_for

EXEMPT = "config.linkerd.io/admission-webhooks"


@pytest.fixture
def helm_env(clean_world: World, tmp_path: Path) -> Iterator[dict[str, str]]:
    """An isolated helm configuration with the fixture repository added as `linkerd`; kube-system unlabelled."""
    env = clean_world.helm_env(tmp_path)
    clean_world.kubectl("label", "namespace", "kube-system", f"{EXEMPT}-")
    yield env
    clean_world.kubectl("label", "namespace", "kube-system", f"{EXEMPT}-")


def _spec(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "spec.yaml"
    # The local cluster runs Kubernetes 1.36, newer than any fixture major supports.
    path.write_text(f"name: e2e\nwaivers: [kubernetes-version]\n{extra}")
    return path


def _preflight(world: World, env: dict[str, str], spec: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = run_upgrader(
        "preflight",
        "--kubeconfig",
        str(world.kubeconfig),
        "--helm",
        str(world.helm),
        "--spec",
        str(spec),
        "-o",
        "json",
        *args,
        env=env,
        timeout=180,
    )
    assert out.returncode in (0, 4), out.stderr
    return out.returncode, json.loads(out.stdout)


def _failing(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["checks"] if c["result"] != "passed" and not c["waived"]}


def _healthy_mesh(world: World) -> None:
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))


def _discover(world: World, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    out = run_upgrader(
        "discover", "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm), *args, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out


def test_healthy_install_passes_everything(clean_world: World, helm_env: dict[str, str], tmp_path: Path) -> None:
    """HA stable-2.13.7 as Linkerd documents it (values-ha.yaml, kube-system unlabelled) passes every check."""
    world = clean_world
    world.install("stable-2.13.7", ha=True)
    _healthy_mesh(world)
    labels = client.CoreV1Api(world.api).read_namespace("kube-system").metadata.labels or {}
    assert EXEMPT not in labels, "the documented install does not label kube-system"
    spec = _spec(tmp_path)
    code, report = _preflight(world, helm_env, spec, "--to", "stable-2.14.10")
    assert _failing(report) == {}
    assert (code, report["success"]) == (0, True)
    assert {c["id"] for c in report["checks"]} >= {
        "cluster.permissions",
        "install.method",
        "helm.release-state",
        "control-plane.ha-replicas",
        "identity.issuer-validity",
        "values.render",
        "crds.present",
        "ha.kube-system-exempt",
        "disruption.pdb-allows-restart",
    }
    checks = {c["id"]: c for c in report["checks"]}
    assert "linkerd-proxy-injector-webhook-config" in checks["ha.kube-system-exempt"]["message"]
    assert "PDB linkerd-dst" in checks["control-plane.ha-replicas"]["message"], "HA recognised without the flag"


def test_discover_reports_ha_from_what_values_ha_installed(clean_world: World, helm_env: dict[str, str]) -> None:
    """2.13.7 sets no highAvailability flag: discover says HA from replicas and PDBs, and says why, whole in a pipe."""
    world = clean_world
    world.install("stable-2.13.7", ha=True)
    ha = json.loads(_discover(world, helm_env, "-o", "json").stdout)["control_plane"]
    assert ha["high_availability"] is True
    assert any(e.startswith("linkerd-identity wants 3 replica(s) with PDB") for e in ha["high_availability_evidence"])
    text = _discover(world, {**helm_env, "COLUMNS": "40"}).stdout  # a pipe: nothing is cut to the width
    assert "High availability: yes (linkerd-destination wants 3 replica(s)" in text
    assert "linkerd-control-plane" in text
    assert "…" not in text


def test_discover_reports_a_plain_install_as_not_ha(clean_world: World, helm_env: dict[str, str]) -> None:
    """A default 2.13.7 install (one replica each, no PDBs) is not HA."""
    clean_world.install("stable-2.13.7")
    plain = json.loads(_discover(clean_world, helm_env, "-o", "json").stdout)["control_plane"]
    assert plain["high_availability"] is False
    assert "linkerd-destination wants 1 replica(s)" in plain["high_availability_evidence"]


@pytest.mark.parametrize(
    ("identity_kwargs", "failing"),
    [
        pytest.param({"issuer_days": 10}, "identity.issuer-validity", id="issuer expiring in 10 days"),
        pytest.param({"mismatched": True}, "identity.issuer-signed-by-anchor", id="issuer not signed by the anchor"),
    ],
)
def test_certificate_hazards(
    clean_world: World, helm_env: dict[str, str], tmp_path: Path, identity_kwargs: dict[str, Any], failing: str
) -> None:
    """Bad issuer certificates fail their identity check with a hint, exit 4."""
    clean_world.install("stable-2.14.10", identity=make_identity(**identity_kwargs))
    code, report = _preflight(clean_world, helm_env, _spec(tmp_path), "--to", "stable-2.14.10")
    bad = _failing(report)
    assert code == 4
    assert set(bad) == {failing}, bad
    assert bad[failing]["severity"] == "error"
    assert bad[failing]["hint"]


def test_release_stuck_in_pending_upgrade(clean_world: World, helm_env: dict[str, str], tmp_path: Path) -> None:
    """A helm upgrade killed mid-wait leaves pending-upgrade; preflight names it and how to unlock it."""
    world = clean_world
    world.install("stable-2.14.9")
    # Pods that can never schedule keep `helm upgrade --wait` waiting; killing it strands the release.
    upgrade = subprocess.Popen(
        [
            str(world.helm),
            "upgrade",
            "linkerd-control-plane",
            "linkerd-control-plane",
            "--repo",
            world.repo_url,
            "--version",
            "1.16.10",
            "-n",
            "linkerd",
            "--reuse-values",
            "--set-string",
            "nodeSelector.upgrader-e2e/none=true",
            "--wait",
            "--timeout",
            "5m",
            "--kubeconfig",
            str(world.kubeconfig),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            "release pending-upgrade",
            lambda: any(r.status == "pending-upgrade" for r in world.helm_adapter().list_releases()),
            timeout=60,
        )
    finally:
        os.killpg(upgrade.pid, signal.SIGKILL)
        upgrade.wait()
    code, report = _preflight(world, helm_env, _spec(tmp_path), "--to", "stable-2.14.10")
    bad = _failing(report)
    assert code == 4
    assert "stuck in pending-upgrade" in bad["helm.release-state"]["message"]
    assert "helm rollback linkerd-control-plane" in bad["helm.release-state"]["hint"]


def test_proxies_two_majors_behind(clean_world: World, helm_env: dict[str, str], tmp_path: Path) -> None:
    """A namespace whose pods run 2.12 proxies under a 2.14 control plane fails data-plane.version-skew."""
    world = clean_world
    world.install("stable-2.14.10")
    world.ensure_namespace(
        "old-team", annotations={"linkerd.io/inject": "enabled", "config.linkerd.io/proxy-version": "stable-2.12.6"}
    )
    world.apply(
        [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "api", "namespace": "old-team"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "api"}},
                    "template": {
                        "metadata": {"labels": {"app": "api"}},
                        "spec": {"containers": [{"name": "api", "image": "registry.example/api:1"}]},
                    },
                },
            }
        ]
    )
    world.wait_ready(["old-team"])
    code, report = _preflight(world, helm_env, _spec(tmp_path), "--to", "stable-2.14.10")
    bad = _failing(report)
    assert code == 4
    assert "old-team/api-" in bad["data-plane.version-skew"]["message"]
    assert "stable-2.12.6" in bad["data-plane.version-skew"]["message"]
    client.CoreV1Api(world.api).delete_namespace("old-team")


# The 2.10/2.11 injector selector: only the label exempts a namespace (what a 2.12+ override may bring back).
LABEL_ONLY = {"matchExpressions": [{"key": EXEMPT, "operator": "NotIn", "values": ["disabled"]}]}


def test_an_injector_selector_taking_kube_system_fails_until_it_is_labelled(
    clean_world: World, helm_env: dict[str, str], tmp_path: Path
) -> None:
    """HA 2.14 with proxyInjector.namespaceSelector overridden to the label only: kube-system is caught, then exempt."""
    world = clean_world
    world.install("stable-2.14.10", ha=True, extra_values={"proxyInjector": {"namespaceSelector": LABEL_ONLY}})
    code, report = _preflight(world, helm_env, _spec(tmp_path), "--to", "stable-2.14.10")
    bad = _failing(report)
    assert code == 4
    assert set(bad) == {"ha.kube-system-exempt"}, bad
    message = bad["ha.kube-system-exempt"]["message"]
    assert "linkerd-proxy-injector-webhook-config (linkerd-proxy-injector.linkerd.io)" in message
    assert f"{{{EXEMPT} NotIn [disabled]}} matches kube-system" in message
    assert f"kubectl label namespace kube-system {EXEMPT}=disabled" in bad["ha.kube-system-exempt"]["hint"]
    world.kubectl("label", "namespace", "kube-system", f"{EXEMPT}=disabled", "--overwrite")
    code, report = _preflight(world, helm_env, _spec(tmp_path), "--to", "stable-2.14.10")
    assert (code, _failing(report)) == (0, {})


def test_ha_2_11_needs_kube_system_labelled(clean_world: World, helm_env: dict[str, str], tmp_path: Path) -> None:
    """The linkerd2 chart (2.11) skips only labelled namespaces: HA with kube-system unlabelled fails the check."""
    world = clean_world
    world.install("stable-2.11.5", ha=True)
    _code, report = _preflight(world, helm_env, _spec(tmp_path), "--to", "stable-2.12.6", "--ack", "chart-split-2.12")
    bad = _failing(report)
    assert "linkerd-proxy-injector-webhook-config" in bad["ha.kube-system-exempt"]["message"]
    world.kubectl("label", "namespace", "kube-system", f"{EXEMPT}=disabled", "--overwrite")
    _code, report = _preflight(world, helm_env, _spec(tmp_path), "--to", "stable-2.12.6", "--ack", "chart-split-2.12")
    assert "ha.kube-system-exempt" not in _failing(report)


def test_budget_allowing_no_disruption(clean_world: World, helm_env: dict[str, str], tmp_path: Path) -> None:
    """payments/ledger's PDB (maxUnavailable 0) would stall a wave once ledger takes pods down: error, exit 4."""
    clean_world.install("stable-2.13.7")
    _healthy_mesh(clean_world)
    code, report = _preflight(clean_world, helm_env, _spec(tmp_path), "--to", "stable-2.14.10")
    assert "disruption.pdb-allows-restart" not in _failing(report), "a surge-only rollout is absorbed"
    clean_world.kubectl("patch", "deployment", "ledger", "-n", "payments", "-p", json.dumps(mesh.ONE_DOWN))
    code, report = _preflight(clean_world, helm_env, _spec(tmp_path), "--to", "stable-2.14.10")
    bad = _failing(report)
    assert code == 4
    assert set(bad) == {"disruption.pdb-allows-restart"}, bad
    assert "payments/ledger" in bad["disruption.pdb-allows-restart"]["message"]


def test_read_only_user(clean_world: World, helm_env: dict[str, str], tmp_path: Path) -> None:
    """As a user bound only to the `view` role (impersonation), missing permissions are listed, exit 4."""
    world = clean_world
    world.install("stable-2.14.10")
    rbac = client.RbacAuthorizationV1Api(world.api)
    name = "upgrader-e2e-readonly"
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "readonly@example.com"}],
        }
    )
    try:
        code, report = _preflight(
            world, helm_env, _spec(tmp_path), "--to", "stable-2.14.10", "--as", "readonly@example.com"
        )
    finally:
        rbac.delete_cluster_role_binding(name)
    bad = _failing(report)
    assert code == 4
    message = bad["cluster.permissions"]["message"]
    # verbs of one resource are listed together: "create, patch, delete customresourcedefinitions..."
    assert re.search(
        r"(^|; )[a-z, ]*\bpatch\b[a-z, ]* customresourcedefinitions\.apiextensions\.k8s\.io cluster-wide", message
    )
    assert re.search(r"(^|; )[a-z, ]*\bcreate\b[a-z, ]* secrets in linkerd", message)
