"""What Linkerd is installed, from a handful of cluster-wide observations.

``observe`` gathers (one helm list, one pod list, one ConfigMap read); ``summarise`` is
pure and turns those observations into an ``Installation``. Proxy versions come from the
``linkerd-proxy`` container's image tag (or the native-sidecar init container of that
name), falling back to the injector's ``linkerd.io/proxy-version`` annotation; a proxy
pinned by digest has no readable version and is listed as such.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from upgrader.ports import HelmPort, HelmRelease, KubePort, Pod

LINKERD_CHARTS = frozenset(
    {
        "linkerd2",
        "linkerd-crds",
        "linkerd-control-plane",
        "linkerd-viz",
        "linkerd-multicluster",
        "linkerd-jaeger",
        "linkerd-smi",
    }
)
CORE_CHARTS = frozenset({"linkerd2", "linkerd-crds", "linkerd-control-plane"})
PROXY_CONTAINER = "linkerd-proxy"
DATA_PLANE_SELECTOR = "linkerd.io/control-plane-ns"
UNKNOWN = "unknown"
FINISHED = frozenset({"Succeeded", "Failed"})  # pod phases whose containers have all ended


@dataclass(frozen=True)
class Installation:
    """The Linkerd found in one cluster."""

    kubernetes_version: str
    releases: tuple[HelmRelease, ...] = ()
    control_plane_namespace: str | None = None
    control_plane_version: str | None = None
    high_availability: bool = False
    # namespace -> proxy version -> number of pods; "unknown" for digest-pinned proxies
    proxies: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def install_method(self) -> str | None:
        """``helm`` when a control-plane release exists, ``cli`` when only linkerd-config does."""
        if any(r.chart_name in ("linkerd-control-plane", "linkerd2") for r in self.releases):
            return "helm"
        return "cli" if self.control_plane_version else None

    @property
    def extensions(self) -> tuple[str, ...]:
        return tuple(r.chart_name for r in self.releases if r.chart_name not in CORE_CHARTS)

    @property
    def found(self) -> bool:
        return bool(self.releases or self.control_plane_version or self.proxies)

    def as_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "install_method": self.install_method,
            "kubernetes_version": self.kubernetes_version,
            "control_plane": {
                "namespace": self.control_plane_namespace,
                "version": self.control_plane_version,
                "high_availability": self.high_availability,
            },
            "releases": [
                {
                    "name": r.name,
                    "namespace": r.namespace,
                    "revision": r.revision,
                    "status": r.status,
                    "chart": r.chart_name,
                    "chart_version": r.chart_version,
                    "app_version": r.app_version,
                }
                for r in self.releases
            ],
            "proxies": self.proxies,
        }


def proxy_version(pod: Pod) -> str | None:
    """The Linkerd version of ``pod``'s proxy, ``"unknown"`` if unreadable, None if unmeshed."""
    sidecars = [c for c in pod.init_containers if c.restart_policy == "Always"]
    for c in (*pod.containers, *sidecars):
        if c.name != PROXY_CONTAINER:
            continue
        image = c.image.split("@", 1)[0]
        last = image.rsplit("/", 1)[-1]
        if ":" in last:
            return last.rsplit(":", 1)[1]
        return pod.annotations.get("linkerd.io/proxy-version") or UNKNOWN
    return None


def summarise(
    kubernetes_version: str,
    releases: list[HelmRelease],
    config_values: str | None,
    pods: list[Pod],
    control_plane_namespace: str | None,
) -> Installation:
    """Turn raw observations into an Installation (pure)."""
    values: dict[str, Any] = {}
    if config_values:
        loaded = yaml.safe_load(config_values)
        values = loaded if isinstance(loaded, dict) else {}
    proxies: dict[str, Counter[str]] = {}
    for pod in pods:
        if pod.phase in FINISHED:
            continue  # a completed Job's pod runs no proxy any more: it is not part of the data plane
        version = proxy_version(pod)
        if version is not None:
            proxies.setdefault(pod.namespace, Counter())[version] += 1
    return Installation(
        kubernetes_version=kubernetes_version,
        releases=tuple(
            sorted((r for r in releases if r.chart_name in LINKERD_CHARTS), key=lambda r: (r.namespace, r.name))
        ),
        control_plane_namespace=control_plane_namespace if config_values is not None else None,
        control_plane_version=str(values["linkerdVersion"]) if values.get("linkerdVersion") else None,
        high_availability=bool(values.get("highAvailability", False)),
        proxies={ns: dict(sorted(c.items())) for ns, c in sorted(proxies.items())},
    )


def observe(kube: KubePort, helm: HelmPort, *, default_namespace: str = "linkerd") -> Installation:
    """Observe the cluster through the ports and summarise what Linkerd is there."""
    version = kube.server_version()
    releases = helm.list_releases()
    control_planes = [r for r in releases if r.chart_name in ("linkerd-control-plane", "linkerd2")]
    # More than one (say, a leftover in a namespace being deleted): the default namespace's wins.
    cp = next((r for r in control_planes if r.namespace == default_namespace), None) or next(iter(control_planes), None)
    namespace = cp.namespace if cp else default_namespace
    config = kube.get_config_map(namespace, "linkerd-config")
    if config is None and namespace != default_namespace:
        # The 2.10/2.11 docs installed the linkerd2 chart without --namespace: its release record
        # lives in `default` while the chart fills the `linkerd` namespace.
        namespace = default_namespace
        config = kube.get_config_map(namespace, "linkerd-config")
    pods = kube.list_pods(label_selector=DATA_PLANE_SELECTOR)
    return summarise(version, releases, config.get("values", "") if config is not None else None, pods, namespace)
