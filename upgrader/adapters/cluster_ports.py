"""ExecutorPorts over the kube and helm adapters: act, and report what is there. No decisions."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import structlog
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from upgrader.adapters.helm import HelmAdapter
from upgrader.adapters.informers import DataPlaneCache
from upgrader.adapters.kube import KubeAdapter, workload_record
from upgrader.dataplane import rolled_out
from upgrader.errors import HelmError, UpgraderError
from upgrader.metrics import MetricsPort, Sample
from upgrader.planning import Plan
from upgrader.ports import DataPlaneView, HelmRelease, Pod, Workload
from upgrader.preflight import CheckResult

CONTROL_PLANE_DEPLOYMENTS = ("linkerd-destination", "linkerd-identity", "linkerd-proxy-injector")
T = TypeVar("T")
log = structlog.get_logger("upgrader.adapters")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, UpgraderError) and exc.retryable


def _log_retry(state: RetryCallState) -> None:
    log.warning("retry", attempt=state.attempt_number, error=str(state.outcome.exception()) if state.outcome else "")


def retrying(call: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
    """Retry reads on transient errors (API unreachable, 429, 5xx): bounded, jittered, logged."""
    for attempt in Retrying(
        sleep=sleep,
        retry=retry_if_exception(_transient),
        stop=stop_after_attempt(5),
        wait=wait_exponential_jitter(multiplier=0.5, max=8),
        before_sleep=_log_retry,
        reraise=True,
    ):
        with attempt:
            return call()
    raise AssertionError("unreachable")


class ClusterPorts:
    """The real cluster and helm, for the executor."""

    def __init__(
        self,
        kube: KubeAdapter,
        helm: HelmAdapter,
        *,
        preflight: Callable[[Plan, int], list[CheckResult]],
        timeout_seconds: int = 300,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.kube, self.helm = kube, helm
        self._api: Any = kube.api_client
        self._apps: Any = client.AppsV1Api(self._api)
        self._core: Any = client.CoreV1Api(self._api)
        self._preflight = preflight
        self._timeout = timeout_seconds
        self._sleep = sleep
        self._cache: DataPlaneCache | None = None

    def release(self, name: str, namespace: str) -> HelmRelease | None:
        try:
            return retrying(lambda: self.helm.status(name, namespace))
        except HelmError as exc:
            if "not found" in exc.message.lower():
                return None
            raise

    def user_values(self, name: str, namespace: str) -> dict[str, Any]:
        return self.helm.get_values(name, namespace)

    def all_values(self, name: str, namespace: str) -> dict[str, Any]:
        return self.helm.get_values(name, namespace, all_values=True)

    def chart_defaults(self, chart: str, version: str) -> dict[str, Any]:
        return self.helm.show_values(chart, version)

    def upgrade(
        self,
        name: str,
        chart: str,
        namespace: str,
        values: dict[str, Any],
        *,
        version: str,
        reset_values: bool,
        reuse_values: bool,
    ) -> HelmRelease:
        """``helm upgrade --wait``, retried on passing API failures after looking at the release first.

        A retry first reads the release: already deployed at ``version`` means the failed attempt
        did the work (the answer was lost), so it is not repeated; a release left pending-* is
        not retried blindly (helm answers "another operation is in progress", which the executor
        reports as a locked release).
        """
        attempts = 0

        def attempt() -> HelmRelease:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                current = self.release(name, namespace)
                if current is not None and current.chart_version == version and current.status == "deployed":
                    log.info("helm-upgrade-landed", release=name, chart_version=version, attempt=attempts)
                    return current
            return self.helm.upgrade(
                name,
                chart,
                namespace,
                values,
                version=version,
                reset_values=reset_values,
                reuse_values=reuse_values,
                wait=True,
            )

        return retrying(attempt, sleep=self._sleep)

    def control_plane_version(self, namespace: str) -> str | None:
        config = retrying(lambda: self.kube.get_config_map(namespace, "linkerd-config"))
        if config is None:
            return None
        loaded = yaml.safe_load(config.get("values", "")) or {}
        return str(loaded.get("linkerdVersion")) if loaded.get("linkerdVersion") else None

    def control_plane_ready(self, namespace: str) -> list[str]:
        """Problems with the control-plane deployments after waiting (watch-based) for their rollout."""
        problems = []
        deadline = time.monotonic() + self._timeout
        for name in CONTROL_PLANE_DEPLOYMENTS:
            try:
                self._apps.read_namespaced_deployment(name, namespace)
            except ApiException as exc:
                problems.append(f"{name}: {exc.reason}")
                continue
            remaining = max(1, int(deadline - time.monotonic()))
            if not self.wait_rolled_out(Workload("Deployment", namespace, name, 0), remaining):
                d = self._apps.read_namespaced_deployment(name, namespace)
                problems.append(f"{name}: {d.status.available_replicas or 0}/{d.spec.replicas or 0} available")
        return problems

    def control_plane_pods(self, namespace: str) -> list[Pod]:
        pods = retrying(lambda: self.kube.list_pods(label_selector="linkerd.io/control-plane-component"))
        return [
            p
            for p in pods
            if p.namespace == namespace
            and p.phase == "Running"
            and p.labels.get("linkerd.io/control-plane-component") != "heartbeat"
        ]

    def crds_stored(self) -> dict[str, tuple[str, ...]]:
        return {c.name: c.stored_versions for c in self.kube.list_crds() if c.name.endswith("linkerd.io")}

    def crds_served(self, chart: str, version: str) -> dict[str, tuple[str, ...]]:
        from upgrader.preflight.observe import crds_from_manifests  # noqa: PLC0415

        return {c.name: c.served for c in crds_from_manifests(self.helm.template(chart, version, "linkerd", {}))}

    def injector_answers(self, namespace: str) -> bool:
        """A server-side dry-run pod that opts in comes back with a linkerd-proxy (webhooks run on dry runs)."""
        pod = {
            "metadata": {"generateName": "upgrader-probe-", "annotations": {"linkerd.io/inject": "enabled"}},
            "spec": {"containers": [{"name": "probe", "image": "registry.example/upgrader-probe:1"}]},
        }
        try:
            created = self._core.create_namespaced_pod("default", pod, dry_run="All")
        except ApiException:
            return False
        names = [c.name for c in created.spec.containers] + [c.name for c in created.spec.init_containers or []]
        return "linkerd-proxy" in names

    def _started(self) -> DataPlaneCache:
        if self._cache is None:
            cache = DataPlaneCache(self._api)
            cache.start()
            cache.wait_synced(timeout=120)
            self._cache = cache
        return self._cache

    def data_plane(self) -> DataPlaneView:
        """The data plane from one cluster-wide list/watch cache (started on first use)."""
        return self._started().snapshot()

    def wait_for_change(self, since: int, timeout: float) -> int:
        return self._started().wait_for_change(since, timeout)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.stop()
            self._cache = None

    def restart(self, workload: Workload, annotations: Mapping[str, str | None]) -> None:
        """What ``kubectl rollout restart`` does (a pod-template annotation), plus ours; None removes one."""
        patch = {"spec": {"template": {"metadata": {"annotations": dict(annotations)}}}}
        calls = {
            "Deployment": self._apps.patch_namespaced_deployment,
            "StatefulSet": self._apps.patch_namespaced_stateful_set,
            "DaemonSet": self._apps.patch_namespaced_daemon_set,
        }
        try:
            retrying(lambda: calls[workload.kind](workload.name, workload.namespace, patch))
        except ApiException as exc:
            raise UpgraderError(
                f"cannot patch {workload.kind} {workload.namespace}/{workload.name}: {exc.status} {exc.reason}",
                hint="check the permissions of the identity upgrader runs as (patch on apps workloads)",
            ) from exc

    def wait_rolled_out(self, workload: Workload, timeout_seconds: int) -> bool:
        """Watch the workload until its rollout completes (observedGeneration, updated/available counts)."""
        lists = {
            "Deployment": self._apps.list_namespaced_deployment,
            "StatefulSet": self._apps.list_namespaced_stateful_set,
            "DaemonSet": self._apps.list_namespaced_daemon_set,
        }
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout_seconds)
        w: Any = watch.Watch()  # type: ignore[no-untyped-call]
        try:
            while dt.datetime.now(dt.UTC) < deadline:
                remaining = max(1, int((deadline - dt.datetime.now(dt.UTC)).total_seconds()))
                for event in w.stream(
                    lists[workload.kind],
                    workload.namespace,
                    field_selector=f"metadata.name={workload.name}",
                    timeout_seconds=remaining,
                ):
                    if rolled_out(workload_record(workload.kind, event["object"])):
                        return True
        except ApiException as exc:
            raise UpgraderError(f"watching {workload.kind} {workload.namespace}/{workload.name}: {exc.reason}") from exc
        finally:
            w.stop()
        return False

    def rollback(self, name: str, namespace: str, revision: int) -> HelmRelease:
        self.helm.rollback(name, namespace, revision, wait=True)
        return self.helm.status(name, namespace)

    def preflight(self, plan: Plan, hop_index: int) -> list[CheckResult]:
        return self._preflight(plan, hop_index)


class RetryingMetrics:
    """A MetricsPort whose samples are retried on passing failures (Prometheus restarting, 5xx, 429)."""

    def __init__(self, metrics: MetricsPort, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._metrics, self._sleep = metrics, sleep

    def sample(self, namespace: str, window_seconds: int) -> Sample:
        return retrying(lambda: self._metrics.sample(namespace, window_seconds), sleep=self._sleep)
