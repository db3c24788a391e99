"""The upgrader CLI against the real cluster and helm."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.harness import binaries
from e2e.harness.backends import ClusterHandle
from e2e.harness.leaks import run_upgrader
from e2e.harness.waits import wait_for


def _upgrader(*args: str) -> subprocess.CompletedProcess[str]:
    return run_upgrader(*args, timeout=120)


def test_version() -> None:
    """`upgrader --version` prints the package version."""
    from upgrader import __version__  # noqa: PLC0415

    out = _upgrader("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"upgrader {__version__}"


def _stub_control_plane_chart(folder: Path) -> Path:
    """A chart named like Linkerd's that renders only linkerd-config (the real fixtures come later)."""
    (folder / "templates").mkdir(parents=True)
    (folder / "Chart.yaml").write_text(
        "apiVersion: v2\nname: linkerd-control-plane\nversion: 1.16.11\nappVersion: stable-2.14.10\n"
    )
    (folder / "values.yaml").write_text("linkerdVersion: stable-2.14.10\nhighAvailability: false\n")
    (folder / "templates" / "config.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: linkerd-config\ndata:\n"
        "  values: |\n{{ toYaml .Values | indent 4 }}\n"
    )
    return folder


def test_discover_reports_releases_config_and_proxies(
    cluster: ClusterHandle, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """discover reads the Helm release, linkerd-config and meshed pods' proxy versions from the cluster."""
    core = client.CoreV1Api(api)
    helm = binaries.program("helm", "helm")
    subprocess.run(
        [
            str(helm),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "install",
            "linkerd-control-plane",
            str(_stub_control_plane_chart(tmp_path / "chart")),
            "-n",
            namespace,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for i, tag in enumerate(["stable-2.14.10", "stable-2.13.7"]):
        pod: dict[str, Any] = {
            "metadata": {"name": f"meshed-{i}", "labels": {"linkerd.io/control-plane-ns": namespace}},
            "spec": {
                "containers": [
                    {"name": "app", "image": "registry.example/app:1"},
                    {"name": "linkerd-proxy", "image": f"cr.l5d.io/linkerd/proxy:{tag}"},
                ]
            },
        }
        core.create_namespaced_pod(namespace, pod)
    core.create_namespaced_pod(
        namespace,
        {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}},
    )
    wait_for("pods listed", lambda: len(core.list_namespaced_pod(namespace).items) == 3)

    out = _upgrader(
        "--log-format", "json", "discover", "--kubeconfig", str(cluster.kubeconfig), "--helm", str(helm), "-o", "json"
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["found"] is True
    assert found["kubernetes_version"] == binaries.KUBERNETES_VERSION
    assert found["control_plane"] == {
        "namespace": namespace,
        "version": "stable-2.14.10",
        "high_availability": False,
        "high_availability_evidence": [
            f"no Deployment linkerd-destination, linkerd-identity, linkerd-proxy-injector in {namespace}"
        ],
    }
    assert [(r["name"], r["chart"], r["chart_version"], r["status"]) for r in found["releases"]] == [
        ("linkerd-control-plane", "linkerd-control-plane", "1.16.11", "deployed")
    ]
    assert found["proxies"][namespace] == {"stable-2.13.7": 1, "stable-2.14.10": 1}
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "discovered" and e["control_plane_version"] == "stable-2.14.10" for e in events)


def test_discover_with_a_missing_kubeconfig_is_bad_input() -> None:
    """A kubeconfig that does not exist gives exit code 2 and a hint, no traceback."""
    out = _upgrader("discover", "--kubeconfig", "/nonexistent/kubeconfig")
    assert out.returncode == 2
    assert "does not exist" in out.stderr
    assert "Traceback" not in out.stderr
