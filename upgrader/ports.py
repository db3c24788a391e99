"""Our boundary to the outside world: what we observe, and the two ports that observe it.

Everything above this line (discovery, planning, gates) works on these plain, frozen
records and never on Kubernetes client objects or pyhelm3 models. The adapters in
``upgrader.adapters`` implement the ports; unit tests implement them with in-memory fakes.
"""

from __future__ import annotations

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
    phase: str = ""


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

    def get_values(self, release: str, namespace: str, *, all_values: bool = False) -> dict[str, Any]:
        """User-supplied values of the current revision (or computed ones with ``all_values``)."""
        ...
