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
from e2e.fixtures.releases import (
    LINKERD2_RELEASE_NAME,
    LINKERD2_RELEASE_NAMESPACE,
    LINKERD2_RELEASES,
    SPLIT_RELEASES,
    release,
)
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
    """helm repo add + search --versions list every fixture control-plane chart, and the linkerd2 chart of
    the releases before 2.12, with its appVersion."""
    env = world.helm_env(tmp_path, helm=helm_binary)

    def search(chart: str) -> set[tuple[str, str]]:
        out = subprocess.run(
            [str(helm_binary), "search", "repo", f"linkerd/{chart}", "--versions", "--devel", "-o", "json"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        found: list[dict[str, Any]] = json.loads(out)
        return {(r["version"], r["app_version"]) for r in found if r["name"] == f"linkerd/{chart}"}

    assert search("linkerd-control-plane") == {(r.control_plane_chart, r.version) for r in SPLIT_RELEASES}
    assert search("linkerd2") == {(r.linkerd2_chart, r.version) for r in LINKERD2_RELEASES}
    assert search("linkerd2") == {("2.10.2", "stable-2.10.2"), ("2.11.5", "stable-2.11.5")}


def _helm_owner(meta: Any) -> tuple[str | None, str | None, str | None]:
    """(meta.helm.sh/release-name, meta.helm.sh/release-namespace, app.kubernetes.io/managed-by) of an object."""
    annotations, labels = meta.annotations or {}, meta.labels or {}
    return (
        annotations.get("meta.helm.sh/release-name"),
        annotations.get("meta.helm.sh/release-namespace"),
        labels.get("app.kubernetes.io/managed-by"),
    )


def test_linkerd2_install_with_sample_mesh(clean_world: World) -> None:
    """stable-2.11.5 the documented way (`helm install linkerd2 linkerd/linkerd2`, no --namespace): one
    release in `default` owning the linkerd namespace, the CRDs and the control plane; meshed pods get
    2.11.5 proxies from the injector reading the 2.11 linkerd-config."""
    world = clean_world
    rel = release("stable-2.11.5")
    installed = world.install(rel.version)
    assert installed.helm_releases == ((LINKERD2_RELEASE_NAME, LINKERD2_RELEASE_NAMESPACE),)
    _install_mesh(world)
    api = world.api
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)

    releases = [r for r in world.helm_adapter().list_releases() if r.chart_name.startswith("linkerd")]
    assert [(r.name, r.namespace, r.chart_name, r.chart_version, r.app_version) for r in releases] == [
        ("linkerd2", "default", "linkerd2", "2.11.5", "stable-2.11.5")
    ]
    owner = ("linkerd2", "default", "Helm")
    ns = core.read_namespace("linkerd")
    assert _helm_owner(ns.metadata) == owner
    assert ns.metadata.labels["config.linkerd.io/admission-webhooks"] == "disabled"
    ext = client.ApiextensionsV1Api(api)
    for crd in rel.crds:
        live = ext.read_custom_resource_definition(crd.name)
        assert _helm_owner(live.metadata) == owner, crd.name
        assert [v.name for v in live.spec.versions if v.storage] == [crd.storage], crd.name
    assert {c.name for c in rel.crds} >= {"servers.policy.linkerd.io", "trafficsplits.split.smi-spec.io"}
    for name in CONTROL_PLANE_DEPLOYMENTS:
        dep = apps.read_namespaced_deployment(name, "linkerd")
        assert _helm_owner(dep.metadata) == owner, name
        assert dep.metadata.annotations["linkerd.io/created-by"] == "linkerd/helm stable-2.11.5"
    hook = client.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(
        "linkerd-proxy-injector-webhook-config"
    )
    assert _helm_owner(hook.metadata) == owner

    config_values = yaml.safe_load(core.read_namespaced_config_map("linkerd-config", "linkerd").data["values"])
    assert config_values["linkerdVersion"] == "stable-2.11.5"
    assert config_values["policyController"]["defaultAllowPolicy"] == "all-unauthenticated"
    assert (config_values["namespace"], config_values["installNamespace"]) == ("linkerd", True)
    for component in ("destination", "identity", "proxy-injector"):
        assert set(_proxy_versions(api, "linkerd", component, "linkerd.io/control-plane-component")) == {
            "stable-2.11.5"
        }, component
    for ns_name, app in mesh.EXPECTED.meshed:
        versions = _proxy_versions(api, ns_name, app)
        assert versions, (ns_name, app)
        assert set(versions) == {"stable-2.11.5"}, (ns_name, app, versions)
    for ns_name, app in mesh.EXPECTED.unmeshed:
        assert set(_proxy_versions(api, ns_name, app)) == {None}, (ns_name, app)
    web = core.list_namespaced_pod("shop", label_selector="app=web").items[0]
    assert web.metadata.annotations["linkerd.io/trust-root-sha256"] == installed.identity.trust_root_sha256
    assert web.metadata.labels["linkerd.io/control-plane-ns"] == "linkerd"
    inits = {c.name: c.image for c in web.spec.init_containers}
    assert inits["linkerd-init"] == "cr.l5d.io/linkerd/proxy-init:v1.5.3"
    # The 2.11 policy CRDs serve policy.linkerd.io/v1beta1.
    server = {
        "apiVersion": "policy.linkerd.io/v1beta1",
        "kind": "Server",
        "metadata": {"name": "web-http", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080, "proxyProtocol": "HTTP/1"},
    }
    world.kubectl("apply", "-f", "-", stdin=json.dumps(server))


def test_chart_split_by_hand_adopts_the_linkerd2_objects(clean_world: World, tmp_path: Path) -> None:
    """Linkerd's 2.12 Helm migration on the fixtures: re-annotate the linkerd2 release's objects,
    `helm install` linkerd-crds and linkerd-control-plane adopting them, drop the old release record.
    Nothing is deleted or recreated: custom resources and old proxies survive; restarted pods get 2.12."""
    world = clean_world
    installed = world.install("stable-2.11.5")
    _install_mesh(world)
    api = world.api
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    ext = client.ApiextensionsV1Api(api)
    server = {
        "apiVersion": "policy.linkerd.io/v1beta1",
        "kind": "Server",
        "metadata": {"name": "web-http", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080, "proxyProtocol": "HTTP/1"},
    }
    world.kubectl("apply", "-f", "-", stdin=json.dumps(server))
    destination_uid = apps.read_namespaced_deployment("linkerd-destination", "linkerd").metadata.uid

    env = world.helm_env(tmp_path)
    manifest = subprocess.run(
        [str(world.helm), "--kubeconfig", str(world.kubeconfig), "get", "manifest", "linkerd2", "-n", "default"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for doc in (d for d in yaml.safe_load_all(manifest) if d):
        kind, meta = doc["kind"], doc["metadata"]
        if kind == "CustomResourceDefinition":
            if meta["name"] == "trafficsplits.split.smi-spec.io":
                continue  # linkerd-smi's, and this cluster has no TrafficSplit to keep
            owner = ("linkerd-crds", "linkerd")
        else:
            owner = ("linkerd-control-plane", "linkerd")
        target = [f"{kind}/{meta['name']}"] + (["-n", meta["namespace"]] if meta.get("namespace") else [])
        world.kubectl(
            "annotate",
            "--overwrite",
            *target,
            f"meta.helm.sh/release-name={owner[0]}",
            f"meta.helm.sh/release-namespace={owner[1]}",
        )

    target = release("stable-2.12.6")
    helm = world.helm_adapter()
    helm.install("linkerd-crds", "linkerd-crds", "linkerd", {}, version=target.crds_chart, repo=world.repo_url)
    # The user values carried over: certificates and the fixture's webhook URL; 2.12 removed
    # `namespace`/`installNamespace` and renamed policyController.defaultAllowPolicy.
    old_values = helm.get_values("linkerd2", "default")
    assert {"identityTrustAnchorsPEM", "identity", "e2e"} <= set(old_values)
    new_values = {k: v for k, v in old_values.items() if k not in ("namespace", "installNamespace", "policyController")}
    cp = helm.install(
        "linkerd-control-plane",
        "linkerd-control-plane",
        "linkerd",
        new_values,
        version=target.control_plane_chart,
        repo=world.repo_url,
    )
    assert (cp.chart_version, cp.app_version) == ("1.9.8", "stable-2.12.6")
    world.kubectl("delete", "secret", "-n", "default", "-l", "owner=helm,name=linkerd2")
    world.wait_control_plane()

    names = {(r.name, r.namespace, r.chart_name) for r in helm.list_releases() if r.chart_name.startswith("linkerd")}
    assert names == {
        ("linkerd-crds", "linkerd", "linkerd-crds"),
        ("linkerd-control-plane", "linkerd", "linkerd-control-plane"),
    }
    for crd in ("serviceprofiles.linkerd.io", "servers.policy.linkerd.io", "serverauthorizations.policy.linkerd.io"):
        assert _helm_owner(ext.read_custom_resource_definition(crd).metadata) == ("linkerd-crds", "linkerd", "Helm")
    # Left to no 2.12 release: the namespace the linkerd2 chart made, the SMI CRD.
    assert _helm_owner(core.read_namespace("linkerd").metadata)[0] == "linkerd-control-plane"
    assert _helm_owner(ext.read_custom_resource_definition("trafficsplits.split.smi-spec.io").metadata)[0] == (
        "linkerd2"
    )
    dest = apps.read_namespaced_deployment("linkerd-destination", "linkerd")
    assert dest.metadata.uid == destination_uid, "adopted, not recreated"
    assert _helm_owner(dest.metadata) == ("linkerd-control-plane", "linkerd", "Helm")
    assert dest.metadata.annotations["linkerd.io/created-by"] == "linkerd/helm stable-2.12.6"
    assert _linkerd_config_version(api) == "stable-2.12.6"
    world.kubectl("get", "server.policy.linkerd.io/web-http", "-n", "shop")
    identity = core.read_namespaced_secret("linkerd-identity-issuer", "linkerd")
    assert identity.data["crt.pem"], "the issuer survives"
    assert set(_proxy_versions(api, "shop", "web")) == {"stable-2.11.5"}, "running pods keep their proxy"

    patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}}}}
    apps.patch_namespaced_deployment("web", "shop", patch)
    wait_for(
        "web restarted",
        lambda: (
            rollout_complete("Deployment", apps.read_namespaced_deployment("web", "shop"))
            and set(_proxy_versions(api, "shop", "web")) == {"stable-2.12.6"}
        ),
        timeout=120,
    )
    web = core.list_namespaced_pod("shop", label_selector="app=web").items[0]
    assert web.metadata.annotations["linkerd.io/trust-root-sha256"] == installed.identity.trust_root_sha256


def test_reset_lets_a_crd_stuck_terminating_without_instances_go(clean_world: World) -> None:
    """A fixture-scoped CRD held by a finalizer nobody removes (as the API server's cleanup controller does when
    it backs off on a CRD whose storage was still starting) is let go by the reset once it has no instances."""
    ext = client.ApiextensionsV1Api(clean_world.api)
    name = "widgets.upgrader-e2e.linkerd.io"
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name, "finalizers": ["upgrader-e2e.linkerd.io/hold"]},
            "spec": {
                "group": "upgrader-e2e.linkerd.io",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "scope": "Namespaced",
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": {"type": "object"}},
                    }
                ],
            },
        }
    )
    wait_for("the CRD established", lambda: bool(ext.read_custom_resource_definition(name).status.conditions))
    ext.delete_custom_resource_definition(name)
    assert ext.read_custom_resource_definition(name).metadata.deletion_timestamp is not None, "held by the finalizer"
    clean_world.reset(timeout=60)
    names = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    assert name not in names
