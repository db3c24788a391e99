"""helm install/upgrade/history/rollback of a local chart through pyhelm3, with helm 4 and helm 3."""

from __future__ import annotations

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

    listed = {(r.name, r.namespace): r for r in helm.list_releases()}
    assert listed[("smoke", namespace)].revision == 3
    assert listed[("smoke", namespace)].chart_version == "0.1.0"


def test_upgrade_never_installs_a_missing_release(helm_binary: Path, cluster: ClusterHandle, namespace: str) -> None:
    """An upgrade of a release that does not exist fails instead of installing it."""
    helm = HelmAdapter(executable=str(helm_binary), kubeconfig=cluster.kubeconfig)
    with pytest.raises(HelmError, match=r"has no deployed releases|not found"):
        helm.upgrade("absent", CHART, namespace, {}, wait=False)
    assert [r for r in helm.list_releases() if r.namespace == namespace] == []
