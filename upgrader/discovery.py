"""What Linkerd is installed, from a handful of cluster-wide observations.

``observe`` gathers (one helm list, one pod list, one ConfigMap read, and the control
plane's workloads and PodDisruptionBudgets); ``summarise`` is pure and turns those
observations into an ``Installation``. Proxy versions come from the ``linkerd-proxy``
container's image tag (or the native-sidecar init container of that name), falling back
to the injector's ``linkerd.io/proxy-version`` annotation; a proxy pinned by digest has no
readable version and is listed as such.

High availability is recognised from what is installed (``detect_ha``): linkerd-config's
``highAvailability`` flag exists only from 2.14 (2.12 and 2.13's values-ha.yaml have no
such key), so an install also counts as HA when every control-plane Deployment wants more
than one replica and is guarded by a PodDisruptionBudget or required pod anti-affinity.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from upgrader.errors import NeverDeployedError
from upgrader.ports import Budget, HelmPort, HelmRelease, HelmRevision, KubePort, Pod, Workload

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
HA_DEPLOYMENTS = ("linkerd-destination", "linkerd-identity", "linkerd-proxy-injector")


@dataclass(frozen=True)
class Installation:
    """The Linkerd found in one cluster."""

    kubernetes_version: str
    releases: tuple[HelmRelease, ...] = ()
    control_plane_namespace: str | None = None
    control_plane_version: str | None = None
    high_availability: bool = False
    ha_evidence: tuple[str, ...] = ()  # what high_availability was decided on (either way)
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
                "high_availability_evidence": list(self.ha_evidence),
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


def _guards(deployment: Workload, budgets: Sequence[Budget]) -> list[str]:
    """What keeps ``deployment``'s replicas from going down together: PDBs selecting its pods, anti-affinity."""
    out = [
        f"PDB {b.name}"
        for b in budgets
        if b.namespace == deployment.namespace
        and b.match_labels
        and all(deployment.pod_labels.get(k) == v for k, v in b.match_labels.items())
    ]
    if deployment.required_anti_affinity:
        out.append("required pod anti-affinity")
    return out


def detect_ha(
    values: dict[str, Any], workloads: Sequence[Workload], budgets: Sequence[Budget], namespace: str
) -> tuple[bool, tuple[str, ...]]:
    """Whether the control plane in ``namespace`` is HA, and the evidence either way (pure).

    HA when linkerd-config says ``highAvailability: true`` (2.14+), or when every control-plane
    Deployment wants more than one replica and has a PDB or required pod anti-affinity (how
    2.12 and 2.13's values-ha.yaml, which set no flag, show up).
    """
    evidence = []
    flag = values.get("highAvailability") in (True, "true")
    if flag:
        evidence.append("linkerd-config has highAvailability: true")
    found = {w.name: w for w in workloads if w.kind == "Deployment" and w.namespace == namespace}
    missing = [d for d in HA_DEPLOYMENTS if d not in found]
    structural = not missing
    for name in HA_DEPLOYMENTS:
        if (w := found.get(name)) is None:
            continue
        guards = _guards(w, budgets)
        evidence.append(f"{name} wants {w.replicas} replica(s)" + (f" with {', '.join(guards)}" if guards else ""))
        structural = structural and w.replicas > 1 and bool(guards)
    if missing:
        evidence.append(f"no Deployment {', '.join(missing)} in {namespace}")
    if values.get("webhookFailurePolicy") == "Fail":
        evidence.append("webhookFailurePolicy: Fail")
    return flag or structural, tuple(evidence)


def summarise(
    kubernetes_version: str,
    releases: list[HelmRelease],
    config_values: str | None,
    pods: list[Pod],
    control_plane_namespace: str | None,
    *,
    workloads: Sequence[Workload] = (),
    budgets: Sequence[Budget] = (),
) -> Installation:
    """Turn raw observations into an Installation (pure); ``workloads`` and ``budgets`` for HA."""
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
    ha: tuple[bool, tuple[str, ...]] = (False, ())  # no linkerd-config: no control plane to judge
    if config_values is not None:
        ha = detect_ha(values, workloads, budgets, control_plane_namespace or "linkerd")
    return Installation(
        kubernetes_version=kubernetes_version,
        releases=tuple(
            sorted((r for r in releases if r.chart_name in LINKERD_CHARTS), key=lambda r: (r.namespace, r.name))
        ),
        control_plane_namespace=control_plane_namespace if config_values is not None else None,
        control_plane_version=str(values["linkerdVersion"]) if values.get("linkerdVersion") else None,
        high_availability=ha[0],
        ha_evidence=ha[1],
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
    workloads, budgets = [], []
    if config is not None:  # a control plane to judge for HA
        workloads, budgets = kube.list_workloads(namespace), kube.list_budgets(namespace)
    return summarise(
        version,
        releases,
        config.get("values", "") if config is not None else None,
        pods,
        namespace,
        workloads=workloads,
        budgets=budgets,
    )


DEPLOYED_ONCE = frozenset({"deployed", "superseded"})  # a revision that ran (not failed, not pending)


def last_deployed(history: Sequence[HelmRevision], at_most: int | None = None) -> HelmRevision | None:
    """The newest revision (at most ``at_most``) that was deployed once: a rollback target, the values to carry."""
    ran = [r for r in history if r.status in DEPLOYED_ONCE and (at_most is None or r.revision <= at_most)]
    return max(ran, key=lambda r: r.revision) if ran else None


def carried_revision(history: Sequence[HelmRevision]) -> HelmRevision | None:
    """The revision whose user values an upgrade carries (and whose chart's values-ha.yaml they hold).

    The newest revision that was deployed: a ``failed`` or ``pending-*`` revision holds values that
    never ran (an unschedulable nodeSelector), so they are not carried. None: never deployed.
    """
    return last_deployed(history)


def never_deployed(
    release: str, namespace: str, history: Sequence[HelmRevision], *, then: str = "run upgrader again"
) -> NeverDeployedError:
    """The error when no revision of ``release`` was ever deployed: there are no values to carry."""
    current = max(history, key=lambda r: r.revision) if history else None
    found = f"is {current.status} at revision {current.revision}" if current else "has no revision"
    return NeverDeployedError(
        f"release {namespace}/{release} {found} and was never deployed: there are no working values to carry",
        hint=f"helm history {release} -n {namespace}; repair or reinstall it with helm, then {then}",
    )


def carried_note(release: str, history: Sequence[HelmRevision]) -> str | None:
    """Why the carried values are not the current revision's (its status), or None when they are."""
    carried = carried_revision(history)
    current = max(history, key=lambda r: r.revision) if history else None
    if carried is None or current is None or current.revision == carried.revision:
        return None
    return (
        f"user values of {release} revision {carried.revision}, the last deployed one "
        f"(revision {current.revision} is {current.status}: its values are not carried)"
    )


def carried_values(helm: HelmPort, release: str, namespace: str) -> tuple[dict[str, Any], HelmRevision, str | None]:
    """The user values an upgrade of ``release`` carries, the revision they are from (``carried_revision``),
    and ``carried_note``: why they are not the current revision's, if they are not.

    Raises ``never_deployed`` when no revision was deployed, and helm's NotFoundError when there is no release.
    """
    history = helm.history(release, namespace)
    carried = carried_revision(history)
    if carried is None:
        raise never_deployed(release, namespace, history)
    values = helm.get_values(release, namespace, revision=carried.revision)
    return values, carried, carried_note(release, history)


_CHART = re.compile(r"^(?P<name>.+?)-(?P<version>v?\d+\.\d+\.\d+\S*)$")


def split_chart(chart: str) -> tuple[str, str]:
    """``linkerd-control-plane-1.18.10-edge`` -> (``linkerd-control-plane``, ``1.18.10-edge``): helm's chart column."""
    m = _CHART.match(chart)
    return (m["name"], m["version"]) if m else (chart, "")


def chart_version_of(revision: HelmRevision, chart_name: str) -> str:
    """``linkerd-control-plane-1.16.11`` -> ``1.16.11`` (helm history names chart and version together)."""
    prefix = f"{chart_name}-"
    return revision.chart[len(prefix) :] if revision.chart.startswith(prefix) else revision.chart
