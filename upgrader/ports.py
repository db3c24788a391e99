"""Our boundary to the outside world: what we observe, and the two ports that observe it.

Everything above this line (discovery, planning, gates) works on these plain, frozen
records and never on Kubernetes client objects or pyhelm3 models. The adapters in
``upgrader.adapters`` implement the ports; unit tests implement them with in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Container:
    """A container or init container of a pod, as far as we care."""

    name: str
    image: str
    restart_policy: str | None = None  # "Always" on an init container = native sidecar


@dataclass(frozen=True)
class Pod:
    """A pod as observed: identity, metadata and its containers."""

    namespace: str
    name: str
    uid: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    containers: tuple[Container, ...] = ()
    init_containers: tuple[Container, ...] = ()
    owner_kind: str = ""
    owner_name: str = ""
    phase: str = ""  # Pending | Running | Succeeded | Failed | Terminating (deletionTimestamp set)
    ready: bool = False  # the Ready condition is True
    restarts: int = 0  # highest restartCount over its containers (init containers included)
    waiting: tuple[str, ...] = ()  # reasons of containers waiting (CrashLoopBackOff, ImagePullBackOff, ...)


@dataclass(frozen=True)
class HelmRelease:
    """One Helm release's current revision (as `helm list -o json` reports it)."""

    name: str
    namespace: str
    revision: int
    status: str
    chart_name: str
    chart_version: str
    app_version: str = ""


@dataclass(frozen=True)
class ReleaseObject:
    """One object of a Helm release's manifest (what the 2.12 chart split hands to a new release)."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


@dataclass(frozen=True)
class HelmRevision:
    """One entry of `helm history`."""

    revision: int
    status: str
    chart: str
    app_version: str
    description: str


class KubePort(Protocol):
    """Read access to the cluster, one cluster-wide call per question."""

    def server_version(self) -> str:
        """The API server's gitVersion, e.g. ``v1.36.3``."""
        ...

    def list_pods(self, *, label_selector: str = "") -> list[Pod]:
        """Every pod in every namespace matching ``label_selector`` (one list call)."""
        ...

    def get_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data, or None when it does not exist."""
        ...

    def list_workloads(self, namespace: str | None = None) -> list[Workload]:
        """Deployments, StatefulSets and DaemonSets in ``namespace`` (every namespace when None)."""
        ...

    def list_budgets(self, namespace: str | None = None) -> list[Budget]:
        """PodDisruptionBudgets in ``namespace`` (every namespace when None)."""
        ...


class HelmPort(Protocol):
    """The helm commands we use, one method each; values always travel on stdin."""

    def version(self) -> str:
        """The helm client's version, e.g. ``v4.2.4``."""
        ...

    def list_releases(self) -> list[HelmRelease]:
        """Releases in all namespaces and all states (including pending-* and failed)."""
        ...

    def history(self, release: str, namespace: str) -> list[HelmRevision]:
        """Every stored revision of ``release``, oldest first."""
        ...

    def search_repo(self, repo: str, chart: str) -> list[tuple[str, str]] | None:
        """(chart version, app version) pairs ``repo`` offers for ``chart``; None if no such repo."""
        ...

    def get_values(
        self, release: str, namespace: str, *, all_values: bool = False, revision: int | None = None
    ) -> dict[str, Any]:
        """User-supplied values of the current revision, or of ``revision`` (computed ones with ``all_values``)."""
        ...

    def chart_file(self, chart: str, version: str, name: str) -> str | None:
        """The text of a file shipped inside ``chart`` at ``version`` (``values-ha.yaml``); None if absent."""
        ...


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    """A Deployment, StatefulSet or DaemonSet with its rollout counters."""

    kind: str
    namespace: str
    name: str
    replicas: int
    ready: int = 0
    available: int = 0
    updated: int = 0
    generation: int = 0
    observed_generation: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    pod_labels: dict[str, str] = field(default_factory=dict)
    pod_annotations: dict[str, str] = field(default_factory=dict)
    total: int | None = None  # status.replicas: pods of every revision (Deployment/StatefulSet)
    revision_settled: bool = True  # StatefulSet: currentRevision == updateRevision
    strategy: str = "RollingUpdate"  # RollingUpdate | Recreate | OnDelete
    max_unavailable: str | None = None  # as written in the rolling-update strategy ("25%", "1"); None = default
    max_surge: str | None = None
    required_anti_affinity: bool = False  # the pod template has requiredDuringScheduling pod anti-affinity

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class SelectorRequirement:
    """One ``matchExpressions`` entry of a LabelSelector."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes LabelSelector as written (an empty one selects everything)."""

    match_labels: dict[str, str] = field(default_factory=dict)
    match_expressions: tuple[SelectorRequirement, ...] = ()


@dataclass(frozen=True)
class WebhookRule:
    """One rule of an admission webhook: which operations on which resources it intercepts."""

    operations: tuple[str, ...] = ()
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebhookEntry:
    """One webhook of a configuration, with what it selects (None selectors select everything)."""

    name: str
    failure_policy: str = "Fail"  # admissionregistration/v1's default
    namespace_selector: LabelSelector | None = None
    object_selector: LabelSelector | None = None
    rules: tuple[WebhookRule, ...] = ()


@dataclass(frozen=True)
class Webhook:
    """A Mutating/ValidatingWebhookConfiguration: ``failure_policies`` per webhook, ``entries`` in full."""

    kind: str  # mutating | validating
    name: str
    failure_policies: tuple[str, ...] = ()
    entries: tuple[WebhookEntry, ...] = ()


@dataclass(frozen=True)
class Budget:
    """A PodDisruptionBudget and how much disruption it allows right now."""

    namespace: str
    name: str
    match_labels: dict[str, str]
    disruptions_allowed: int
    max_unavailable: str | None = None
    min_available: str | None = None


@dataclass(frozen=True)
class CustomResourceDefinition:
    name: str
    served: tuple[str, ...]
    storage: str
    stored_versions: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)  # owner (meta.helm.sh/*), bundle, policy


@dataclass(frozen=True)
class Access:
    """One permission the plan needs, and whether the caller has it."""

    verb: str
    group: str
    resource: str
    namespace: str = ""  # "" = cluster-wide
    allowed: bool = False

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else " cluster-wide"
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''}{where}"


@dataclass(frozen=True)
class CertificateSecret:
    """A certificate Secret's type and its public parts only (never the private key)."""

    type: str
    certificates: dict[str, str]  # crt.pem | tls.crt | ca.crt -> PEM


class PreflightKubePort(KubePort, Protocol):
    """What preflight observes beyond discovery (each a cluster-wide call where possible)."""

    def list_namespaces(self) -> list[Namespace]: ...

    def list_webhooks(self) -> list[Webhook]: ...

    def list_crds(self) -> list[CustomResourceDefinition]: ...

    def read_certificate_secret(self, namespace: str, name: str) -> CertificateSecret | None: ...

    def review_access(self, wanted: list[Access]) -> list[Access]: ...


@dataclass(frozen=True)
class DataPlaneView:
    """One consistent copy of the cached data plane; ``version`` counts the changes seen so far."""

    namespaces: tuple[Namespace, ...]
    workloads: tuple[Workload, ...]
    pods: tuple[Pod, ...]
    budgets: tuple[Budget, ...]
    version: int = 0
