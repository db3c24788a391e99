"""The local cluster is a real Kubernetes: real versions, Ready fake nodes, real controllers."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from typing import Any

from kubernetes import client

from e2e.harness import binaries
from e2e.harness.backends import ClusterHandle
from e2e.harness.waits import rollout_complete, wait_for

SPEC = {"containers": [{"name": "app", "image": "registry.example/demo:1"}]}


def _template(app: str) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": app}}, "spec": SPEC}


def _deployment() -> dict[str, Any]:
    return {
        "metadata": {"name": "web"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": _template("web")},
    }


def _statefulset() -> dict[str, Any]:
    return {
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": _template("db"),
        },
    }


def _daemonset() -> dict[str, Any]:
    return {
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": _template("agent")},
    }


def test_kubectl_reports_real_client_and_server_versions(cluster: ClusterHandle) -> None:
    """kubectl built from the module proxy reports v1.36.3 for itself and the API server."""
    out = subprocess.run(
        [str(binaries.program("kubectl")), "--kubeconfig", str(cluster.kubeconfig), "version", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    versions = json.loads(out)
    assert versions["clientVersion"]["gitVersion"] == binaries.KUBERNETES_VERSION
    assert versions["serverVersion"]["gitVersion"] == binaries.KUBERNETES_VERSION


def test_three_fake_nodes_are_ready(api: client.ApiClient) -> None:
    """The launcher creates three KWOK nodes and they report Ready."""
    nodes = client.CoreV1Api(api).list_node(label_selector="type=kwok").items
    assert len(nodes) >= 3
    for node in nodes:
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True", node.metadata.name


def _owned_pods(core: client.CoreV1Api, namespace: str, selector: str) -> dict[str, Any]:
    return {p.metadata.uid: p for p in core.list_namespaced_pod(namespace, label_selector=selector).items}


def test_workloads_become_available_and_rollout_restart_replaces_pods(api: client.ApiClient, namespace: str) -> None:
    """Deployment, StatefulSet and DaemonSet become available; a restart patch rolls every pod."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "db"},
            "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]},
        },
    )
    apps.create_namespaced_deployment(namespace, _deployment())
    apps.create_namespaced_stateful_set(namespace, _statefulset())
    apps.create_namespaced_daemon_set(namespace, _daemonset())
    readers = {
        ("Deployment", "web", "app=web"): apps.read_namespaced_deployment,
        ("StatefulSet", "db", "app=db"): apps.read_namespaced_stateful_set,
        ("DaemonSet", "agent", "app=agent"): apps.read_namespaced_daemon_set,
    }
    for (kind, name, _), read in readers.items():
        wait_for(
            f"{kind} {name} available", lambda r=read, k=kind, n=name: rollout_complete(k, r(n, namespace)), timeout=120
        )
    before = {key: _owned_pods(core, namespace, key[2]) for key in readers}
    assert len(before[("Deployment", "web", "app=web")]) == 3
    assert len(before[("StatefulSet", "db", "app=db")]) == 2
    assert len(before[("DaemonSet", "agent", "app=agent")]) == 3  # one per node
    generations = {key: read(key[1], namespace).metadata.generation for key, read in readers.items()}

    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
    apps.patch_namespaced_deployment("web", namespace, patch)
    apps.patch_namespaced_stateful_set("db", namespace, patch)
    apps.patch_namespaced_daemon_set("agent", namespace, patch)

    for (kind, name, selector), read in readers.items():
        obj = wait_for(
            f"{kind} {name} restarted",
            lambda r=read, k=kind, n=name: (o := r(n, namespace)) and rollout_complete(k, o) and o,
            timeout=180,
        )
        assert obj.metadata.generation == generations[(kind, name, selector)] + 1
        assert obj.status.observed_generation >= obj.metadata.generation
        pods = wait_for(
            f"{kind} {name} old pods gone",
            lambda s=selector, k=(kind, name, selector): (
                (p := _owned_pods(core, namespace, s))
                and not (set(p) & set(before[k]))
                and len(p) == len(before[k])
                and p
            ),
            timeout=120,
        )
        for pod in pods.values():
            assert pod.metadata.annotations["kubectl.kubernetes.io/restartedAt"] == stamp
            assert pod.status.phase == "Running"
