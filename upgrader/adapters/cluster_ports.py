"""ExecutorPorts over the kube and helm adapters: act, and report what is there. No decisions.

Outside failures become typed errors in ``upgrader.adapters.errors``; every read and every
idempotent write (the restart patch, the dry-run probe, helm rollback) goes through the one retry
policy, ``upgrader.adapters.retrying``, which retries ``TransientError`` only.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import structlog
import yaml
from kubernetes import client, watch

from upgrader.adapters.errors import mapped
from upgrader.adapters.helm import HelmAdapter
from upgrader.adapters.informers import DataPlaneCache
from upgrader.adapters.kube import KubeAdapter, workload_record
from upgrader.adapters.retrying import retried, retrying
from upgrader.dataplane import rolled_out
from upgrader.errors import AccessDeniedError, NotFoundError, UpgraderError
from upgrader.gatewayapi import ROUTE_CRDS, STORED_CHECKED
from upgrader.metrics import MetricsPort, Sample
from upgrader.permissions import PROBE_NAMESPACE
from upgrader.planning import Plan
from upgrader.ports import (
    CustomResourceDefinition,
    DataPlaneView,
    HelmRelease,
    HelmRevision,
    Pod,
    ReleaseObject,
    Workload,
)
from upgrader.preflight import CheckResult

CONTROL_PLANE_DEPLOYMENTS = ("linkerd-destination", "linkerd-identity", "linkerd-proxy-injector")
log = structlog.get_logger("upgrader.adapters")


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
        self._dynamic: Any = None

    def release(self, name: str, namespace: str) -> HelmRelease | None:
        try:
            return self.helm.status(name, namespace)
        except NotFoundError:
            return None

    def user_values(self, name: str, namespace: str, revision: int | None = None) -> dict[str, Any]:
        return self.helm.get_values(name, namespace, revision=revision)

    def history(self, name: str, namespace: str) -> list[HelmRevision]:
        return self.helm.history(name, namespace)

    def all_values(self, name: str, namespace: str) -> dict[str, Any]:
        return self.helm.get_values(name, namespace, all_values=True)

    def chart_defaults(self, chart: str, version: str) -> dict[str, Any]:
        return self.helm.show_values(chart, version)

    def chart_file(self, chart: str, version: str, name: str) -> str | None:
        return self.helm.chart_file(chart, version, name)

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

        return retrying(attempt, sleep=self._sleep, what="helm upgrade")

    def control_plane_version(self, namespace: str) -> str | None:
        config = self.kube.get_config_map(namespace, "linkerd-config")
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
                self._deployment(name, namespace)
            except UpgraderError as exc:
                problems.append(f"{name}: {exc.message}")
                continue
            remaining = max(1, int(deadline - time.monotonic()))
            if not self.wait_rolled_out(Workload("Deployment", namespace, name, 0), remaining):
                d = self._deployment(name, namespace)
                problems.append(f"{name}: {d.status.available_replicas or 0}/{d.spec.replicas or 0} available")
        return problems

    @retried
    def _deployment(self, name: str, namespace: str) -> Any:
        with mapped(f"reading Deployment {namespace}/{name}"):
            return self._apps.read_namespaced_deployment(name, namespace, _request_timeout=10)

    def control_plane_pods(self, namespace: str) -> list[Pod]:
        pods = self.kube.list_pods(label_selector="linkerd.io/control-plane-component")
        return [
            p
            for p in pods
            if p.namespace == namespace
            and p.phase == "Running"
            and p.labels.get("linkerd.io/control-plane-component") != "heartbeat"
        ]

    def crds_stored(self) -> dict[str, tuple[str, ...]]:
        return {c.name: c.stored_versions for c in self.kube.list_crds() if c.name.endswith(STORED_CHECKED)}

    def route_crds(self) -> list[CustomResourceDefinition]:
        return [c for c in self.kube.list_crds() if c.name in ROUTE_CRDS]

    def crds_served(self, chart: str, version: str) -> dict[str, tuple[str, ...]]:
        from upgrader.preflight.observe import crds_from_manifests  # noqa: PLC0415

        return {c.name: c.served for c in crds_from_manifests(self.helm.template(chart, version, "linkerd", {}))}

    def injector_answers(self, namespace: str) -> bool:
        """A server-side dry-run pod that opts in comes back with a linkerd-proxy (webhooks run on dry runs).

        A webhook that fails or a refused pod is an injector that does not answer (False); a
        caller that may not create pods in PROBE_NAMESPACE is told so (AccessDeniedError).
        """
        try:
            created = self._probe()
        except AccessDeniedError:
            raise
        except UpgraderError as exc:
            log.warning("injector-probe", namespace=PROBE_NAMESPACE, error=exc.message)
            return False
        names = [c.name for c in created.spec.containers] + [c.name for c in created.spec.init_containers or []]
        return "linkerd-proxy" in names

    @retried
    def _probe(self) -> Any:
        """Create the probe pod as a server-side dry run (nothing is stored, so trying again is safe)."""
        pod = {
            "metadata": {"generateName": "upgrader-probe-", "annotations": {"linkerd.io/inject": "enabled"}},
            "spec": {"containers": [{"name": "probe", "image": "registry.example/upgrader-probe:1"}]},
        }
        with mapped(f"creating a dry-run Pod in {PROBE_NAMESPACE}"):
            return self._core.create_namespaced_pod(PROBE_NAMESPACE, pod, dry_run="All", _request_timeout=30)

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

    @retried
    def restart(self, workload: Workload, annotations: Mapping[str, str | None]) -> None:
        """What ``kubectl rollout restart`` does (a pod-template annotation), plus ours; None removes one.

        The same patch twice leaves the same annotations, so a passing failure is retried.
        """
        patch = {"spec": {"template": {"metadata": {"annotations": dict(annotations)}}}}
        calls = {
            "Deployment": self._apps.patch_namespaced_deployment,
            "StatefulSet": self._apps.patch_namespaced_stateful_set,
            "DaemonSet": self._apps.patch_namespaced_daemon_set,
        }
        with mapped(f"patching {workload.kind} {workload.namespace}/{workload.name}"):
            calls[workload.kind](workload.name, workload.namespace, patch, _request_timeout=30)

    def wait_rolled_out(self, workload: Workload, timeout_seconds: int) -> bool:
        """Watch the workload until its rollout completes (observedGeneration, updated/available counts).

        Each watch stream is one attempt of the retry policy: a stream broken by a passing failure
        is opened again (a watch is a read), until the deadline.
        """
        lists = {
            "Deployment": self._apps.list_namespaced_deployment,
            "StatefulSet": self._apps.list_namespaced_stateful_set,
            "DaemonSet": self._apps.list_namespaced_daemon_set,
        }
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout_seconds)
        doing = f"watching {workload.kind} {workload.namespace}/{workload.name}"
        w: Any = watch.Watch()  # type: ignore[no-untyped-call]

        def one_stream() -> bool:
            """True once the rollout is complete; False when the stream ends (or the deadline passes) first."""
            remaining = int((deadline - dt.datetime.now(dt.UTC)).total_seconds())
            if remaining <= 0:
                return False
            with mapped(doing):
                for event in w.stream(
                    lists[workload.kind],
                    workload.namespace,
                    field_selector=f"metadata.name={workload.name}",
                    timeout_seconds=remaining,
                ):
                    if rolled_out(workload_record(workload.kind, event["object"])):
                        return True
            return False

        try:
            while dt.datetime.now(dt.UTC) < deadline:
                if retrying(one_stream, sleep=self._sleep, what=doing):
                    return True
        finally:
            w.stop()
        return False

    def rollback(self, name: str, namespace: str, revision: int) -> HelmRelease:
        """``helm rollback --wait`` (retried on passing failures by the helm adapter), then the release as it is."""
        self.helm.rollback(name, namespace, revision, wait=True)
        return self.helm.status(name, namespace)

    # ---- the 2.12 chart split --------------------------------------------------------------
    def install(self, name: str, chart: str, namespace: str, values: dict[str, Any], *, version: str) -> HelmRelease:
        """``helm install`` (not retried: an install is not idempotent; the executor observes first)."""
        return self.helm.install(name, chart, namespace, values, version=version)

    def release_objects(self, name: str, namespace: str) -> list[ReleaseObject]:
        """The objects of a release's manifest, namespaced ones with their namespace filled in."""
        objects = self.helm.manifest(name, namespace)
        return [
            replace(o, namespace=namespace) if o.namespace is None and self._resource(o).namespaced else o
            for o in objects
        ]

    def chart_objects(self, chart: str, version: str, namespace: str, values: dict[str, Any]) -> list[ReleaseObject]:
        return self.helm.chart_objects(chart, version, namespace, values)

    def adopt(self, obj: ReleaseObject, release: str, namespace: str) -> None:
        """Mark ``obj`` as belonging to ``release`` so ``helm install`` adopts it instead of refusing it.

        helm adopts an existing object whose ``meta.helm.sh/release-name`` and
        ``-namespace`` annotations name the release and whose ``app.kubernetes.io/managed-by``
        label is ``Helm``. The patch is idempotent (retried on passing failures).
        """
        body = {
            "metadata": {
                "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace},
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
            }
        }
        resource = self._resource(obj)

        def patch() -> None:
            with mapped(f"patch {obj}"):
                resource.patch(
                    body=body,
                    name=obj.name,
                    namespace=obj.namespace if resource.namespaced else None,
                    content_type="application/merge-patch+json",
                )

        retrying(patch, sleep=self._sleep, what=f"adopt {obj}")

    def remove_release_record(self, name: str, namespace: str) -> int:
        """Delete a release's helm records (its ``sh.helm.release.v1.*`` Secrets), never its objects."""
        selector = f"owner=helm,name={name}"

        def listed() -> list[Any]:
            with mapped(f"list helm records of {namespace}/{name}"):
                return list(self._core.list_namespaced_secret(namespace, label_selector=selector).items)

        records = retrying(listed, sleep=self._sleep, what="list release records")
        for secret in records:

            def delete(secret_name: str = secret.metadata.name) -> None:
                try:
                    with mapped(f"delete Secret {namespace}/{secret_name}"):
                        self._core.delete_namespaced_secret(secret_name, namespace)
                except NotFoundError:
                    pass

            retrying(delete, sleep=self._sleep, what="delete release record")
        return len(records)

    def _resource(self, obj: ReleaseObject) -> Any:
        from kubernetes.dynamic import DynamicClient  # noqa: PLC0415 - discovery only when the split runs

        if self._dynamic is None:
            self._dynamic = DynamicClient(self._api)  # type: ignore[no-untyped-call]
        with mapped(f"discover {obj.api_version} {obj.kind}"):
            return self._dynamic.resources.get(api_version=obj.api_version, kind=obj.kind)

    def preflight(self, plan: Plan, hop_index: int) -> list[CheckResult]:
        return self._preflight(plan, hop_index)


class RetryingMetrics:
    """A MetricsPort whose samples are retried on passing failures (Prometheus restarting, 5xx, 429)."""

    def __init__(self, metrics: MetricsPort, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._metrics, self._sleep = metrics, sleep

    def sample(self, namespace: str, window_seconds: int) -> Sample:
        return retrying(lambda: self._metrics.sample(namespace, window_seconds), sleep=self._sleep)
