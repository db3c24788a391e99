"""KubePort over the official Kubernetes Python client.

Every call runs under ``mapped`` (outside failures become typed errors in one place,
``upgrader.adapters.errors``) and every method is a read retried by the one retry policy.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog
import urllib3
import yaml
from kubernetes import client, config

from upgrader import __version__
from upgrader.adapters.errors import mapped
from upgrader.adapters.retrying import retried
from upgrader.errors import InputError, NotFoundError
from upgrader.ports import (
    Access,
    Budget,
    CertificateSecret,
    Container,
    CustomResourceDefinition,
    LabelSelector,
    Namespace,
    Pod,
    SelectorRequirement,
    Webhook,
    WebhookEntry,
    WebhookRule,
    Workload,
)

log = structlog.get_logger("upgrader.adapters")
_PUBLIC_CERT_KEYS = ("crt.pem", "tls.crt", "ca.crt")  # never key.pem / tls.key
_REVIEWERS = 8  # SelfSubjectAccessReviews in flight at once
_T = TypeVar("_T")
PAGE_SIZE = 500  # objects per LIST page, so a big cluster never arrives as one response
_MAPS = frozenset({"labels", "annotations", "matchLabels", "nodeSelector", "data"})  # string maps, kept as dicts


@functools.cache
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _wrap(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        return value if key in _MAPS else Raw(value)
    if isinstance(value, list):
        return [Raw(v) if isinstance(v, dict) else v for v in value]
    return value


class Raw:
    """An object as the API sent it (parsed JSON), read with the client models' attribute names
    (``pod.metadata.owner_references``; a missing field is None), so the record functions below take
    either. Listing and watching through it skips the client's model layer, which costs about a
    millisecond per pod: a plan over 10,000 pods would spend seconds building objects it never reads."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        key = _camel(name)
        return _wrap(key, self._data.get(key))


@contextlib.contextmanager
def without_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused for the block (resumed after, unless it was off already).

    Parsing a LIST page makes about a hundred thousand objects, none in a reference cycle (parsed JSON, then
    records), and every few hundred of them start a collection that walks the objects alive, the records read
    so far included: at 10,000 pods the collections cost more than the parsing. Reference counting still
    frees everything acyclic; a collection runs as usual once the block is over."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def raw_pages(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[tuple[list[Raw], dict[str, Any]]]:
    """One LIST in pages of ``PAGE_SIZE``, as parsed JSON: each page's items and its list metadata."""
    token: str | None = None
    while True:
        response = call(*args, limit=PAGE_SIZE, _continue=token, _preload_content=False, **kwargs)
        with without_gc():
            page = json.loads(response.data)
        meta = page.get("metadata") or {}
        yield [Raw(item) for item in page.get("items") or ()], meta
        token = meta.get("continue")
        if not token:
            return


def raw_records(call: Callable[..., Any], convert: Callable[[Raw], _T], *args: Any, **kwargs: Any) -> list[_T]:
    """Every object of a paginated LIST as a record, page by page: only one page of JSON is held at a time.

    A continue token expires once the API server compacts past it (every five minutes by default): on a
    slow list of a big cluster the next page answers 410 Gone. That list is started again from the first
    page, once, dropping what it had read (the pages would not be one consistent snapshot); a second 410
    fails as usual.
    """
    pages = 0

    def read() -> list[_T]:
        nonlocal pages
        pages, records = 0, []
        # paused over the whole list: each page is freed by reference counting once converted, so the one
        # collection after it only meets the records (see without_gc)
        with without_gc():
            for items, _ in raw_pages(call, *args, **kwargs):
                pages += 1
                records += [convert(item) for item in items]
        return records

    try:
        return read()
    except client.ApiException as exc:
        if exc.status != 410 or pages == 0:  # every request after the first page carries the continue token
            raise
        log.warning("list-restart", reason="continue token expired (410 Gone)", pages_dropped=pages)
    return read()


def _containers(items: list[Any] | None) -> tuple[Container, ...]:
    return tuple(
        Container(name=c.name, image=c.image or "", restart_policy=getattr(c, "restart_policy", None))
        for c in items or []
    )


USER_AGENT = f"upgrader/{__version__}"
CONNECT_RETRIES = urllib3.Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0, backoff_factor=0.2)


def in_cluster(kubeconfig: Path | None, context: str | None) -> bool:
    """In a pod (the API's address in the environment) with no kubeconfig given or found: use the pod's
    ServiceAccount, as helm does there."""
    if kubeconfig is not None or context is not None or os.environ.get("KUBECONFIG"):
        return False
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (Path.home() / ".kube" / "config").exists()


class KubeAdapter:
    """Reads the cluster with one client bound to one kubeconfig/context."""

    def __init__(
        self,
        *,
        kubeconfig: Path | None = None,
        context: str | None = None,
        impersonate: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        try:
            configuration = client.Configuration()
            if in_cluster(kubeconfig, context):
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=str(kubeconfig) if kubeconfig else None,
                    context=context,
                    client_configuration=configuration,
                )
            # urllib3 would retry three times at once (no backoff): keep two quick connect retries (nothing
            # was sent) and leave the rest to our retry policy, which backs off (upgrader.adapters.retrying).
            configuration.retries = CONNECT_RETRIES
            api: Any = client.ApiClient(configuration=configuration)
            api.user_agent = USER_AGENT  # the API server's audit log tells our requests from helm's (Helm/...)
        except (config.ConfigException, OSError, yaml.YAMLError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"cannot load kubeconfig {kubeconfig or '(default)'}: {exc}",
                hint="pass --kubeconfig PATH (and --context NAME) of the cluster running Linkerd",
            ) from exc
        self._api = api
        if impersonate:
            self._api.set_default_header("Impersonate-User", impersonate)
        self._core = client.CoreV1Api(self._api)
        self._sleep = sleep

    @property
    def api_client(self) -> Any:
        """The underlying client (for sibling adapters that write, e.g. cluster_ports)."""
        return self._api

    @retried
    def server_version(self) -> str:
        with mapped("reading its version"):
            info = client.VersionApi(self._api).get_code(_request_timeout=10)
        return str(info.git_version)

    @retried
    def list_pods(self, *, label_selector: str = "") -> list[Pod]:
        with mapped("listing pods"):
            return raw_records(
                self._core.list_pod_for_all_namespaces, pod_record, label_selector=label_selector, _request_timeout=30
            )

    @retried
    def get_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            with mapped(f"reading ConfigMap {namespace}/{name}"):
                cm = self._core.read_namespaced_config_map(name, namespace, _request_timeout=10)
        except NotFoundError:
            return None
        return dict(cm.data or {})

    @retried
    def list_namespaces(self) -> list[Namespace]:
        with mapped("listing namespaces"):
            return raw_records(self._core.list_namespace, namespace_record, _request_timeout=30)

    @retried
    def list_workloads(self, namespace: str | None = None) -> list[Workload]:
        apps: Any = client.AppsV1Api(self._api)
        calls = {
            "Deployment": (apps.list_deployment_for_all_namespaces, apps.list_namespaced_deployment),
            "StatefulSet": (apps.list_stateful_set_for_all_namespaces, apps.list_namespaced_stateful_set),
            "DaemonSet": (apps.list_daemon_set_for_all_namespaces, apps.list_namespaced_daemon_set),
        }
        out = []
        for kind, (everywhere, one) in calls.items():
            convert = functools.partial(workload_record, kind)
            with mapped(f"listing {kind}s"):
                if namespace:
                    out += raw_records(one, convert, namespace, _request_timeout=30)
                else:
                    out += raw_records(everywhere, convert, _request_timeout=30)
        return out

    @retried
    def list_webhooks(self) -> list[Webhook]:
        adm: Any = client.AdmissionregistrationV1Api(self._api)
        with mapped("listing mutating webhooks"):
            mutating = adm.list_mutating_webhook_configuration(_request_timeout=30).items
        with mapped("listing validating webhooks"):
            validating = adm.list_validating_webhook_configuration(_request_timeout=30).items
        return [
            webhook_record(kind, w)
            for kind, items in (("mutating", mutating), ("validating", validating))
            for w in items
        ]

    @retried
    def list_budgets(self, namespace: str | None = None) -> list[Budget]:
        policy: Any = client.PolicyV1Api(self._api)
        with mapped(f"listing PodDisruptionBudgets{' in ' + namespace if namespace else ''}"):
            if namespace:
                call = policy.list_namespaced_pod_disruption_budget
                return raw_records(call, budget_record, namespace, _request_timeout=30)
            return raw_records(policy.list_pod_disruption_budget_for_all_namespaces, budget_record, _request_timeout=30)

    @retried
    def list_crds(self) -> list[CustomResourceDefinition]:
        ext: Any = client.ApiextensionsV1Api(self._api)
        with mapped("listing CustomResourceDefinitions"):
            items = ext.list_custom_resource_definition(_request_timeout=30).items
        return [
            CustomResourceDefinition(
                name=c.metadata.name,
                served=tuple(v.name for v in c.spec.versions if v.served),
                storage=next((v.name for v in c.spec.versions if v.storage), ""),
                stored_versions=tuple((c.status.stored_versions if c.status else None) or ()),
                annotations=dict(c.metadata.annotations or {}),
            )
            for c in items
        ]

    @retried
    def read_certificate_secret(self, namespace: str, name: str) -> CertificateSecret | None:
        try:
            with mapped(f"reading Secret {namespace}/{name}"):
                secret = self._core.read_namespaced_secret(name, namespace, _request_timeout=10)
        except NotFoundError:
            return None
        data = secret.data or {}
        public = {k: base64.b64decode(data[k]).decode(errors="replace") for k in _PUBLIC_CERT_KEYS if k in data}
        return CertificateSecret(type=secret.type or "", certificates=public)

    def review_access(self, wanted: list[Access]) -> list[Access]:
        """Whether the caller may do each of ``wanted``: one SelfSubjectAccessReview each (they change nothing)."""
        authz: Any = client.AuthorizationV1Api(self._api)
        with ThreadPoolExecutor(max_workers=_REVIEWERS) as pool:  # a run needs some 160 of them
            allowed = list(pool.map(lambda a: self._allowed(authz, a), wanted))
        return [Access(a.verb, a.group, a.resource, a.namespace, ok) for a, ok in zip(wanted, allowed, strict=True)]

    @retried
    def _allowed(self, authz: Any, access: Access) -> bool:
        attributes = {
            "verb": access.verb,
            "group": access.group,
            "resource": access.resource,
            "namespace": access.namespace or None,
        }
        with mapped(f"reviewing access to {access}"):
            review = authz.create_self_subject_access_review(
                {"spec": {"resourceAttributes": attributes}}, _request_timeout=10
            )
        return bool(review.status.allowed)


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
        required_anti_affinity=_required_anti_affinity(spec.template.spec if spec.template else None),
    )


def _required_anti_affinity(pod_spec: Any) -> bool:
    affinity = pod_spec.affinity if pod_spec is not None else None
    anti = affinity.pod_anti_affinity if affinity is not None else None
    return bool(anti is not None and anti.required_during_scheduling_ignored_during_execution)


def selector_record(obj: Any) -> LabelSelector | None:
    """A V1LabelSelector as a LabelSelector record (None stays None: the API's "select everything")."""
    if obj is None:
        return None
    return LabelSelector(
        match_labels=dict(obj.match_labels or {}),
        match_expressions=tuple(
            SelectorRequirement(e.key, e.operator, tuple(e.values or ())) for e in obj.match_expressions or []
        ),
    )


def webhook_record(kind: str, obj: Any) -> Webhook:
    """A V1Mutating/ValidatingWebhookConfiguration (named by ``kind``) as a Webhook record."""
    entries = tuple(
        WebhookEntry(
            name=h.name,
            failure_policy=h.failure_policy or "Fail",
            namespace_selector=selector_record(h.namespace_selector),
            object_selector=selector_record(h.object_selector),
            rules=tuple(
                WebhookRule(
                    operations=tuple(r.operations or ()),
                    api_groups=tuple(r.api_groups or ()),
                    resources=tuple(r.resources or ()),
                )
                for r in h.rules or []
            ),
        )
        for h in obj.webhooks or []
    )
    return Webhook(kind, obj.metadata.name, tuple(e.failure_policy for e in entries), entries)


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
