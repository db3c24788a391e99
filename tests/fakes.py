"""In-memory fakes of our own ports (never of the Kubernetes client or pyhelm3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from upgrader.checkpoints import Checkpoint, Survey, serialise
from upgrader.ports import Budget, HelmRelease, HelmRevision, Pod, Workload


@dataclass
class FakeKube:
    """KubePort over lists and dicts; records the calls it answered."""

    version: str = "v1.36.3"
    pods: list[Pod] = field(default_factory=list)
    config_maps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    workloads: list[Workload] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def server_version(self) -> str:
        self.calls.append("version")
        return self.version

    def list_pods(self, *, label_selector: str = "") -> list[Pod]:
        self.calls.append(f"list_pods {label_selector}")
        key = label_selector.split("=", maxsplit=1)[0]
        return [p for p in self.pods if not key or key in p.labels]

    def get_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        self.calls.append(f"get_config_map {namespace}/{name}")
        return self.config_maps.get((namespace, name))

    def list_workloads(self, namespace: str | None = None) -> list[Workload]:
        self.calls.append(f"list_workloads {namespace or '*'}")
        return [w for w in self.workloads if namespace is None or w.namespace == namespace]

    def list_budgets(self, namespace: str | None = None) -> list[Budget]:
        self.calls.append(f"list_budgets {namespace or '*'}")
        return [b for b in self.budgets if namespace is None or b.namespace == namespace]


@dataclass
class FakeHelm:
    """HelmPort over a list of releases."""

    releases: list[HelmRelease] = field(default_factory=list)
    values: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # the current revision's
    past_values: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)  # an older revision's
    past: dict[str, list[HelmRevision]] = field(default_factory=dict)  # release -> revisions before the current one
    repo: dict[str, list[tuple[str, str]]] | None = None  # chart -> [(chart version, app version)]
    files: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (chart, version, name) -> text

    def version(self) -> str:
        return "v4.2.4"

    def list_releases(self) -> list[HelmRelease]:
        return list(self.releases)

    def history(self, release: str, namespace: str) -> list[HelmRevision]:
        current = [
            HelmRevision(r.revision, r.status, f"{r.chart_name}-{r.chart_version}", r.app_version, "")
            for r in self.releases
            if (r.name, r.namespace) == (release, namespace)
        ]
        if not current:
            from upgrader.errors import ReleaseNotFoundError  # noqa: PLC0415

            raise ReleaseNotFoundError(f"release {namespace}/{release} not found")
        return [*self.past.get(release, []), *current]

    def get_values(
        self, release: str, namespace: str, *, all_values: bool = False, revision: int | None = None
    ) -> dict[str, Any]:
        current = next((r.revision for r in self.releases if (r.name, r.namespace) == (release, namespace)), None)
        if revision is not None and revision != current:
            return self.past_values.get((release, namespace, revision), {})
        return self.values.get((release, namespace), {})

    def search_repo(self, repo: str, chart: str) -> list[tuple[str, str]] | None:
        return None if self.repo is None else list(self.repo.get(chart, []))

    def chart_file(self, chart: str, version: str, name: str) -> str | None:
        return self.files.get((chart.rsplit("/", 1)[-1], version, name))


class MemoryStore:
    """CheckpointStore in memory, counting writes."""

    def __init__(self) -> None:
        self._runs: dict[str, str] = {}
        self.saves = 0

    def fetch(self, *, run_id: str) -> Checkpoint | None:
        text = self._runs.get(run_id)
        return Checkpoint.model_validate_json(text) if text else None

    def store(self, *, checkpoint: Checkpoint) -> None:
        self.saves += 1
        self._runs[checkpoint.run_id] = serialise(checkpoint)

    def runs(self) -> list[Checkpoint]:
        return [Checkpoint.model_validate_json(t) for t in self._runs.values()]

    def survey(self) -> Survey:
        return Survey(self.runs()).sorted()

    def purge(self, *, run_id: str) -> None:
        self._runs.pop(run_id, None)
