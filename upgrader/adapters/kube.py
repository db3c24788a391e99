"""KubePort over the official Kubernetes Python client."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from upgrader.errors import ClusterUnreachableError, InputError, UpgraderError
from upgrader.ports import (
    Access,
    Budget,
    CertificateSecret,
    Container,
    CustomResourceDefinition,
    Namespace,
    Pod,
    Webhook,
    Workload,
)

_PUBLIC_CERT_KEYS = ("crt.pem", "tls.crt", "ca.crt")  # never key.pem / tls.key


class AccessDeniedError(UpgraderError):
    """The API refused a read (401/403); the message names what was refused."""


def _containers(items: list[Any] | None) -> tuple[Container, ...]:
    return tuple(
        Container(name=c.name, image=c.image or "", restart_policy=getattr(c, "restart_policy", None))
        for c in items or []
    )


class KubeAdapter:
    """Reads the cluster with one client bound to one kubeconfig/context."""

    def __init__(
        self, *, kubeconfig: Path | None = None, context: str | None = None, impersonate: str | None = None
    ) -> None:
        try:
            self._api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig) if kubeconfig else None, context=context
            )
        except (config.ConfigException, OSError, yaml.YAMLError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"cannot load kubeconfig {kubeconfig or '(default)'}: {exc}",
                hint="pass --kubeconfig PATH (and --context NAME) of the cluster running Linkerd",
            ) from exc
        if impersonate:
            self._api.set_default_header("Impersonate-User", impersonate)
        self._core = client.CoreV1Api(self._api)

    @property
    def api_client(self) -> Any:
        """The underlying client (for sibling adapters that write, e.g. cluster_ports)."""
        return self._api

    def _guard(self, what: str, exc: Exception) -> UpgraderError:
        if isinstance(exc, ApiException) and exc.status in (401, 403):
            return AccessDeniedError(
                f"the Kubernetes API refused {what} ({exc.status} {exc.reason})",
                hint="run with credentials that can read the Linkerd installation (see upgrader preflight)",
            )
        return ClusterUnreachableError(
            f"the Kubernetes API did not answer while {what}: {exc}",
            hint="check that the cluster is up and that --kubeconfig/--context point at it",
        )

    def server_version(self) -> str:
        try:
            info = client.VersionApi(self._api).get_code(_request_timeout=10)
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            raise self._guard("reading its version", exc) from exc
        return str(info.git_version)

    def list_pods(self, *, label_selector: str = "") -> list[Pod]:
        try:
            items: list[Any] = self._core.list_pod_for_all_namespaces(
                label_selector=label_selector, _request_timeout=30
            ).items
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            raise self._guard("listing pods", exc) from exc
        return [pod_record(p) for p in items]

    def get_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            cm = self._core.read_namespaced_config_map(name, namespace, _request_timeout=10)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._guard(f"reading ConfigMap {namespace}/{name}", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._guard(f"reading ConfigMap {namespace}/{name}", exc) from exc
        return dict(cm.data or {})

    def _read(self, what: str, call: Any) -> Any:
        try:
            return call()
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            raise self._guard(what, exc) from exc

    def list_namespaces(self) -> list[Namespace]:
        items = self._read("listing namespaces", lambda: self._core.list_namespace(_request_timeout=30).items)
        return [namespace_record(n) for n in items]

    def list_workloads(self, namespace: str | None = None) -> list[Workload]:
        apps = client.AppsV1Api(self._api)
        calls = {
            "Deployment": (apps.list_deployment_for_all_namespaces, apps.list_namespaced_deployment),
            "StatefulSet": (apps.list_stateful_set_for_all_namespaces, apps.list_namespaced_stateful_set),
            "DaemonSet": (apps.list_daemon_set_for_all_namespaces, apps.list_namespaced_daemon_set),
        }
        out = []
        for kind, (everywhere, one) in calls.items():
            items = self._read(
                f"listing {kind}s",
                lambda e=everywhere, o=one: (
                    (o(namespace, _request_timeout=30) if namespace else e(_request_timeout=30)).items
                ),
            )
            out += [workload_record(kind, w) for w in items]
        return out

    def list_webhooks(self) -> list[Webhook]:
        adm = client.AdmissionregistrationV1Api(self._api)
        mutating = self._read("listing mutating webhooks", lambda: adm.list_mutating_webhook_configuration().items)
        validating = self._read(
            "listing validating webhooks", lambda: adm.list_validating_webhook_configuration().items
        )
        return [
            Webhook(kind, w.metadata.name, tuple(h.failure_policy or "Fail" for h in w.webhooks or []))
            for kind, items in (("mutating", mutating), ("validating", validating))
            for w in items
        ]

    def list_budgets(self) -> list[Budget]:
        policy = client.PolicyV1Api(self._api)
        items = self._read(
            "listing PodDisruptionBudgets",
            lambda: policy.list_pod_disruption_budget_for_all_namespaces(_request_timeout=30).items,
        )
        return [budget_record(b) for b in items]

    def list_crds(self) -> list[CustomResourceDefinition]:
        ext = client.ApiextensionsV1Api(self._api)
        items = self._read(
            "listing CustomResourceDefinitions", lambda: ext.list_custom_resource_definition(_request_timeout=30).items
        )
        return [
            CustomResourceDefinition(
                name=c.metadata.name,
                served=tuple(v.name for v in c.spec.versions if v.served),
                storage=next((v.name for v in c.spec.versions if v.storage), ""),
                stored_versions=tuple((c.status.stored_versions if c.status else None) or ()),
            )
            for c in items
        ]

    def read_certificate_secret(self, namespace: str, name: str) -> CertificateSecret | None:
        try:
            secret = self._core.read_namespaced_secret(name, namespace, _request_timeout=10)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._guard(f"reading Secret {namespace}/{name}", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._guard(f"reading Secret {namespace}/{name}", exc) from exc
        data = secret.data or {}
        public = {k: base64.b64decode(data[k]).decode(errors="replace") for k in _PUBLIC_CERT_KEYS if k in data}
        return CertificateSecret(type=secret.type or "", certificates=public)

    def review_access(self, wanted: list[Access]) -> list[Access]:
        authz = client.AuthorizationV1Api(self._api)
        out = []
        for a in wanted:
            body = {
                "spec": {
                    "resourceAttributes": {
                        "verb": a.verb,
                        "group": a.group,
                        "resource": a.resource,
                        "namespace": a.namespace or None,
                    }
                }
            }
            review = self._read(f"reviewing access to {a}", lambda b=body: authz.create_self_subject_access_review(b))
            out.append(Access(a.verb, a.group, a.resource, a.namespace, bool(review.status.allowed)))
        return out


def _text(value: Any) -> str | None:
    """An IntOrString field as written ("25%", "1"), or None when unset."""
    return None if value is None else str(value)


def pod_record(obj: Any) -> Pod:
    """A V1Pod as a Pod record ("Terminating" as phase once deletion has started)."""
    meta, status = obj.metadata, obj.status
    owner = (meta.owner_references or [None])[0]
    statuses = [*((status.init_container_statuses if status else None) or ())]
    statuses += (status.container_statuses if status else None) or ()
    conditions = (status.conditions if status else None) or ()
    return Pod(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid or "",
        labels=dict(meta.labels or {}),
        annotations=dict(meta.annotations or {}),
        containers=_containers(obj.spec.containers),
        init_containers=_containers(obj.spec.init_containers),
        owner_kind=owner.kind if owner else "",
        owner_name=owner.name if owner else "",
        phase="Terminating" if meta.deletion_timestamp else ((status.phase if status else "") or ""),
        ready=any(c.type == "Ready" and c.status == "True" for c in conditions),
        restarts=max((s.restart_count or 0 for s in statuses), default=0),
        waiting=tuple(
            s.state.waiting.reason for s in statuses if s.state and s.state.waiting and s.state.waiting.reason
        ),
    )


def workload_record(kind: str, obj: Any) -> Workload:
    """A V1Deployment, V1StatefulSet or V1DaemonSet (named by ``kind``) as a Workload record."""
    meta, spec, st = obj.metadata, obj.spec, obj.status
    template = spec.template.metadata if spec.template else None
    if kind == "DaemonSet":
        replicas = (st.desired_number_scheduled if st else 0) or 0
        ready, available = (st.number_ready if st else 0) or 0, (st.number_available if st else 0) or 0
        updated, total = (st.updated_number_scheduled if st else 0) or 0, None
    else:
        replicas = spec.replicas if spec.replicas is not None else 1
        ready, available = (st.ready_replicas if st else 0) or 0, (st.available_replicas if st else 0) or 0
        updated, total = (st.updated_replicas if st else 0) or 0, (None if st is None else st.replicas or 0)
    strategy = spec.strategy if kind == "Deployment" else spec.update_strategy
    rolling = strategy.rolling_update if strategy else None
    return Workload(
        kind=kind,
        namespace=meta.namespace,
        name=meta.name,
        replicas=replicas,
        ready=ready,
        available=available,
        updated=updated,
        generation=meta.generation or 0,
        observed_generation=(st.observed_generation if st else 0) or 0,
        labels=dict(meta.labels or {}),
        annotations=dict(meta.annotations or {}),
        pod_labels=dict((template.labels if template else None) or {}),
        pod_annotations=dict((template.annotations if template else None) or {}),
        total=total,
        # Both revisions unset (never observed) counts as settled; one unset does not.
        revision_settled=kind != "StatefulSet" or st is None or st.current_revision == st.update_revision,
        strategy=(strategy.type if strategy else None) or "RollingUpdate",
        max_unavailable=_text(rolling.max_unavailable) if rolling else None,
        max_surge=_text(getattr(rolling, "max_surge", None)) if rolling else None,
    )


def budget_record(obj: Any) -> Budget:
    """A policy/v1 PodDisruptionBudget as a Budget record."""
    spec, status = obj.spec, obj.status
    return Budget(
        namespace=obj.metadata.namespace,
        name=obj.metadata.name,
        match_labels=dict((spec.selector.match_labels if spec.selector else None) or {}),
        disruptions_allowed=int((status.disruptions_allowed if status else 0) or 0),
        max_unavailable=_text(spec.max_unavailable),
        min_available=_text(spec.min_available),
    )


def namespace_record(obj: Any) -> Namespace:
    """A V1Namespace as a Namespace record."""
    meta = obj.metadata
    return Namespace(meta.name, dict(meta.labels or {}), dict(meta.annotations or {}))
