"""The Linkerd-like world behaves like real Linkerd installations, including their traps."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.fixtures import mesh
from e2e.fixtures.releases import RELEASES, release
from e2e.fixtures.world import CONTROL_PLANE_DEPLOYMENTS, World
from e2e.harness.leaks import run_upgrader
from e2e.harness.waits import rollout_complete, wait_for
from upgrader.discovery import proxy_version
from upgrader.errors import HelmError
from upgrader.ports import Container, Pod


def _proxy_versions(api: client.ApiClient, namespace: str, app: str, label: str = "app") -> list[str | None]:
    """The proxy version of every (non-terminating) pod of ``app``, read from its containers."""
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{label}={app}").items
    out = []
    for p in pods:
        if p.metadata.deletion_timestamp is not None:
            continue
        view = Pod(
            namespace,
            p.metadata.name,
            annotations=dict(p.metadata.annotations or {}),
            containers=tuple(Container(c.name, c.image) for c in p.spec.containers),
            init_containers=tuple(Container(c.name, c.image, c.restart_policy) for c in p.spec.init_containers or []),
        )
        out.append(proxy_version(view))
    return out


def _linkerd_config_version(api: client.ApiClient, namespace: str = "linkerd") -> str:
    cm = client.CoreV1Api(api).read_namespaced_config_map("linkerd-config", namespace)
    return str(yaml.safe_load(cm.data["values"])["linkerdVersion"])


def _install_mesh(world: World) -> None:
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))


def test_ha_install_with_sample_mesh(clean_world: World) -> None:
    """stable-2.13.7 in HA: 3 replicas per component on 3 nodes; meshed pods carry 2.13.7 proxies, others none."""
    world = clean_world
    installed = world.install("stable-2.13.7", ha=True, viz=True)
    _install_mesh(world)
    api = world.api
    apps = client.AppsV1Api(api)
    for name in CONTROL_PLANE_DEPLOYMENTS:
        dep = apps.read_namespaced_deployment(name, "linkerd")
        assert (dep.spec.replicas, dep.status.available_replicas) == (3, 3), name
        pods = (
            client.CoreV1Api(api)
            .list_namespaced_pod(
                "linkerd", label_selector=f"linkerd.io/control-plane-component={name.removeprefix('linkerd-')}"
            )
            .items
        )
        assert len({p.spec.node_name for p in pods}) == 3, f"{name} replicas share a node despite anti-affinity"
    pdbs = {p.metadata.name for p in client.PolicyV1Api(api).list_namespaced_pod_disruption_budget("linkerd").items}
    assert pdbs == {"linkerd-dst", "linkerd-identity", "linkerd-proxy-injector"}
    assert _linkerd_config_version(api) == "stable-2.13.7"

    for ns, app in mesh.EXPECTED.meshed:
        versions = _proxy_versions(api, ns, app)
        assert versions, (ns, app)
        assert set(versions) == {"stable-2.13.7"}, (ns, app, versions)
    for ns, app in mesh.EXPECTED.unmeshed:
        versions = _proxy_versions(api, ns, app)
        assert versions, (ns, app)
        assert set(versions) == {None}, (ns, app, versions)
    web = client.CoreV1Api(api).list_namespaced_pod("shop", label_selector="app=web").items[0]
    assert web.metadata.annotations["linkerd.io/trust-root-sha256"] == installed.identity.trust_root_sha256
    assert web.metadata.labels["linkerd.io/proxy-deployment"] == "web"
    for component in ("metrics-api", "tap", "web"):
        assert set(_proxy_versions(api, "linkerd-viz", component, "component")) == {"stable-2.13.7"}, component


def test_manual_upgrade_only_restarted_pods_get_the_new_proxy(clean_world: World) -> None:
    """CRDs then control plane to stable-2.14.10 by hand: config says 2.14, old pods keep 2.13, restarted get 2.14."""
    world = clean_world
    installed = world.install("stable-2.13.7")
    _install_mesh(world)
    helm = world.helm_adapter()
    target = release("stable-2.14.10")
    helm.upgrade("linkerd-crds", "linkerd-crds", "linkerd", {}, version=target.crds_chart, repo=world.repo_url)
    # What Linkerd's docs recommend: --reset-values plus the values that matter (certificates).
    values = world.control_plane_values(target, installed.identity)
    upgraded = helm.upgrade(
        "linkerd-control-plane",
        "linkerd-control-plane",
        "linkerd",
        values,
        version=target.control_plane_chart,
        repo=world.repo_url,
        reset_values=True,
    )
    assert (upgraded.chart_version, upgraded.app_version) == ("1.16.11", "stable-2.14.10")
    world.wait_control_plane()
    api = world.api
    assert _linkerd_config_version(api) == "stable-2.14.10"
    assert set(_proxy_versions(api, "shop", "web")) == {"stable-2.13.7"}

    apps = client.AppsV1Api(api)
    patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}}
    apps.patch_namespaced_deployment("web", "shop", patch)
    wait_for(
        "web restarted",
        lambda: (
            rollout_complete("Deployment", apps.read_namespaced_deployment("web", "shop"))
            and set(_proxy_versions(api, "shop", "web")) == {"stable-2.14.10"}
        ),
        timeout=120,
    )
    assert set(_proxy_versions(api, "shop", "api")) == {"stable-2.13.7"}, "pods that were not restarted keep 2.13"


def test_reuse_values_across_majors_misses_the_new_key(clean_world: World) -> None:
    """HA 2.15 -> 2.16 with --reuse-values fails to render on controller.podDisruptionBudget (the real trap)."""
    world = clean_world
    world.install("edge-24.2.4", ha=True)
    helm = world.helm_adapter()
    with pytest.raises(HelmError, match=r"podDisruptionBudget|nil pointer"):
        helm.upgrade(
            "linkerd-control-plane",
            "linkerd-control-plane",
            "linkerd",
            {},
            version=release("edge-24.8.2").control_plane_chart,
            repo=world.repo_url,
            reuse_values=True,
        )
    assert helm.status("linkerd-control-plane", "linkerd").chart_version == "1.18.10-edge", "nothing was upgraded"


def test_reset_values_without_certificates_fails(clean_world: World) -> None:
    """--reset-values without the identity values fails with Linkerd's own message."""
    world = clean_world
    world.install("stable-2.14.9")
    helm = world.helm_adapter()
    with pytest.raises(HelmError, match="Please provide the identity trust anchors"):
        helm.upgrade(
            "linkerd-control-plane",
            "linkerd-control-plane",
            "linkerd",
            {},
            version=release("stable-2.14.10").control_plane_chart,
            repo=world.repo_url,
            reset_values=True,
        )


def test_crd_downgrade_across_a_storage_version_is_rejected(clean_world: World) -> None:
    """After 2.16 stored a v1beta3 Server, rolling linkerd-crds back to 2.15 is refused by the API server."""
    world = clean_world
    world.install("edge-24.8.2")
    world.ensure_namespace("shop")
    server = {
        "apiVersion": "policy.linkerd.io/v1beta3",
        "kind": "Server",
        "metadata": {"name": "web-http", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080},
    }
    world.kubectl("apply", "-f", "-", stdin=json.dumps(server))
    crd = client.ApiextensionsV1Api(world.api).read_custom_resource_definition("servers.policy.linkerd.io")
    assert "v1beta3" in crd.status.stored_versions
    with pytest.raises(HelmError, match=r"storedVersions|must appear in spec.versions"):
        world.helm_adapter().upgrade(
            "linkerd-crds",
            "linkerd-crds",
            "linkerd",
            {},
            version=release("edge-24.2.4").crds_chart,
            repo=world.repo_url,
        )
    crd = client.ApiextensionsV1Api(world.api).read_custom_resource_definition("servers.policy.linkerd.io")
    assert [v.name for v in crd.spec.versions if v.storage] == ["v1beta3"]


def test_cli_style_install_has_no_helm_release(clean_world: World) -> None:
    """A CLI-style install is marked linkerd/cli and discovery finds it through linkerd-config."""
    world = clean_world
    world.install("stable-2.14.10", method="cli")
    dep = client.AppsV1Api(world.api).read_namespaced_deployment("linkerd-destination", "linkerd")
    assert dep.metadata.annotations["linkerd.io/created-by"] == "linkerd/cli stable-2.14.10"
    out = run_upgrader("discover", "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm), "-o", "json")
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["releases"] == []
    assert found["control_plane"]["version"] == "stable-2.14.10"


def test_chart_repository_answers_like_linkerds(world: World, helm_binary: Path, tmp_path: Path) -> None:
    """helm repo add + search --versions list every fixture control-plane chart with its appVersion."""
    env = world.helm_env(tmp_path, helm=helm_binary)
    out = subprocess.run(
        [str(helm_binary), "search", "repo", "linkerd/linkerd-control-plane", "--versions", "--devel", "-o", "json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: list[dict[str, Any]] = json.loads(out)
    assert {(r["version"], r["app_version"]) for r in found} == {(r.control_plane_chart, r.version) for r in RELEASES}
