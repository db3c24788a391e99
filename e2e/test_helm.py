"""helm install/upgrade/history/rollback of a local chart through pyhelm3, with helm 4 and helm 3."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from kubernetes import client

from e2e.harness import binaries
from e2e.harness.backends import ClusterHandle
from upgrader.adapters.helm import HelmAdapter
from upgrader.errors import HelmError

CHART = Path(__file__).parent / "charts" / "smoke"


def test_helm_binaries_report_real_versions(helm_binary: Path, cluster: ClusterHandle) -> None:
    """pyhelm3 reads the version the binary was built with (v4.2.4 / v3.21.4)."""
    helm = HelmAdapter(executable=str(helm_binary), kubeconfig=cluster.kubeconfig)
    expected = {binaries.HELM4_VERSION, binaries.HELM3_VERSION}
    assert helm.version() in expected


def test_install_upgrade_history_rollback(
    helm_binary: Path, cluster: ClusterHandle, api: client.ApiClient, namespace: str
) -> None:
    """A release goes through install, upgrade and rollback, and helm history records each."""
    helm = HelmAdapter(executable=str(helm_binary), kubeconfig=cluster.kubeconfig, timeout="2m")
    core = client.CoreV1Api(api)

    def message() -> str:
        return str(core.read_namespaced_config_map("smoke-settings", namespace).data["message"])

    installed = helm.install("smoke", CHART, namespace, {"message": "one"})
    assert (installed.revision, installed.status, installed.chart_name) == (1, "deployed", "smoke")
    assert message() == "one"

    upgraded = helm.upgrade("smoke", CHART, namespace, {"message": "two"}, reset_values=True)
    assert (upgraded.revision, upgraded.status) == (2, "deployed")
    assert message() == "two"
    assert helm.get_values("smoke", namespace) == {"message": "two"}

    helm.rollback("smoke", namespace, 1)
    assert message() == "one"
    history = helm.history("smoke", namespace)
    assert [(h.revision, h.status) for h in history] == [(1, "superseded"), (2, "superseded"), (3, "deployed")]
    assert "Rollback to 1" in history[-1].description

    current = helm.status("smoke", namespace)
    assert (current.revision, current.status, current.chart_name, current.chart_version) == (
        3,
        "deployed",
        "smoke",
        "0.1.0",
    )
    listed = {(r.name, r.namespace): r for r in helm.list_releases()}
    assert listed[("smoke", namespace)].revision == 3
    assert listed[("smoke", namespace)].chart_version == "0.1.0"


def test_upgrade_never_installs_a_missing_release(helm_binary: Path, cluster: ClusterHandle, namespace: str) -> None:
    """An upgrade of a release that does not exist fails instead of installing it."""
    helm = HelmAdapter(executable=str(helm_binary), kubeconfig=cluster.kubeconfig)
    with pytest.raises(HelmError, match=r"has no deployed releases|not found"):
        helm.upgrade("absent", CHART, namespace, {}, wait=False)
    assert [r for r in helm.list_releases() if r.namespace == namespace] == []


def test_helm_template_assumes_the_built_kubernetes_minor(helm_binary: Path, tmp_path: Path) -> None:
    """Offline `helm template` renders with Kubernetes 1.36, not helm 3's built-in 1.20 default."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text("apiVersion: v2\nname: cap\nversion: 0.1.0\n")
    (tmp_path / "templates" / "cap.yaml").write_text("kube: {{ .Capabilities.KubeVersion.Version }}\n")
    out = subprocess.run([str(helm_binary), "template", str(tmp_path)], capture_output=True, text=True, check=True)
    minor = binaries.KUBERNETES_VERSION.rsplit(".", 1)[0]
    assert f"kube: {minor}.0" in out.stdout


def test_failed_releases_are_listed(helm_binary: Path, cluster: ClusterHandle, namespace: str) -> None:
    """list_releases includes releases in a failed state (helm 3 --all, helm 4 default)."""
    helm = HelmAdapter(executable=str(helm_binary), kubeconfig=cluster.kubeconfig)
    with pytest.raises(HelmError, match="upgrader-e2e-no-such-namespace"):
        helm.install("broken", CHART, namespace, {"failOnApply": True}, wait=False)
    listed = {(r.name, r.namespace): r for r in helm.list_releases()}
    assert listed[("broken", namespace)].status == "failed"
