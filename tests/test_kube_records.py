"""The kube adapter's converters turn Kubernetes client objects into our records."""

from __future__ import annotations

import datetime as dt
import gc
import json
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client as k
from kubernetes.client.exceptions import ApiException
from structlog.testing import capture_logs

from upgrader.adapters.kube import (
    Raw,
    budget_record,
    namespace_record,
    pod_record,
    raw_records,
    webhook_record,
    without_gc,
    workload_record,
)
from upgrader.ports import (
    Budget,
    Container,
    LabelSelector,
    Namespace,
    SelectorRequirement,
    WebhookEntry,
    WebhookRule,
)

TEMPLATE = k.V1PodTemplateSpec(
    metadata=k.V1ObjectMeta(labels={"app": "web"}, annotations={"linkerd.io/inject": "enabled"}),
    spec=k.V1PodSpec(containers=[k.V1Container(name="app", image="registry.example/app:1")]),
)
SELECTOR = k.V1LabelSelector(match_labels={"app": "web"})


def _meta(**extra: Any) -> k.V1ObjectMeta:
    return k.V1ObjectMeta(namespace="shop", name="web", **extra)


def _status(name: str, restarts: int = 0, waiting: str | None = None) -> k.V1ContainerStatus:
    state = k.V1ContainerState(waiting=k.V1ContainerStateWaiting(reason=waiting)) if waiting is not None else None
    return k.V1ContainerStatus(
        name=name, image="img", image_id="", ready=waiting is None, restart_count=restarts, state=state
    )


def _pod(status: k.V1PodStatus | None = None, **meta: Any) -> k.V1Pod:
    return k.V1Pod(
        metadata=_meta(uid="u-1", labels={"app": "web"}, **meta),
        spec=k.V1PodSpec(
            containers=[k.V1Container(name="app", image="registry.example/app:1")],
            init_containers=[
                k.V1Container(
                    name="linkerd-proxy", image="cr.l5d.io/linkerd/proxy:edge-26.6.3", restart_policy="Always"
                )
            ],
        ),
        status=status,
    )


def _ready(value: str) -> list[k.V1PodCondition]:
    return [k.V1PodCondition(type="PodScheduled", status="True"), k.V1PodCondition(type="Ready", status=value)]


def test_a_running_ready_pod_keeps_identity_containers_and_owner() -> None:
    """A Running pod whose Ready condition is True is ready, with no restarts and nothing waiting."""
    owner = k.V1OwnerReference(api_version="apps/v1", kind="ReplicaSet", name="web-1", uid="rs")
    pod = pod_record(
        _pod(
            k.V1PodStatus(phase="Running", conditions=_ready("True"), container_statuses=[_status("app")]),
            owner_references=[owner],
        )
    )
    assert (pod.namespace, pod.name, pod.uid, pod.labels) == ("shop", "web", "u-1", {"app": "web"})
    assert pod.containers == (Container("app", "registry.example/app:1"),)
    assert pod.init_containers == (Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:edge-26.6.3", "Always"),)
    assert (pod.owner_kind, pod.owner_name) == ("ReplicaSet", "web-1")
    assert (pod.phase, pod.ready, pod.restarts, pod.waiting) == ("Running", True, 0, ())


def test_a_crashlooping_pod_is_not_ready_and_names_why_it_waits() -> None:
    """Waiting reasons of containers and init containers are kept; an empty reason is skipped."""
    status = k.V1PodStatus(
        phase="Running",
        conditions=_ready("False"),
        init_container_statuses=[_status("linkerd-proxy", waiting="ImagePullBackOff")],
        container_statuses=[_status("app", restarts=4, waiting="CrashLoopBackOff"), _status("side", waiting="")],
    )
    pod = pod_record(_pod(status))
    assert not pod.ready
    assert sorted(pod.waiting) == ["CrashLoopBackOff", "ImagePullBackOff"]


@pytest.mark.parametrize(
    ("init", "containers", "expected"),
    [
        pytest.param([], [], 0, id="no container statuses yet means no restarts"),
        pytest.param([], [_status("app", 2), _status("side", 5)], 5, id="restarts are the highest container count"),
        pytest.param([_status("linkerd-proxy", 7)], [_status("app", 1)], 7, id="init containers count too"),
    ],
)
def test_restarts_are_the_highest_restart_count(
    init: list[k.V1ContainerStatus], containers: list[k.V1ContainerStatus], expected: int
) -> None:
    """``restarts`` is the highest restartCount over containers and init containers."""
    status = k.V1PodStatus(phase="Running", init_container_statuses=init, container_statuses=containers)
    assert pod_record(_pod(status)).restarts == expected


def test_a_pod_being_deleted_is_terminating_whatever_its_phase() -> None:
    """A deletionTimestamp turns the phase into Terminating."""
    deleted = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    pod = pod_record(_pod(k.V1PodStatus(phase="Running", conditions=_ready("True")), deletion_timestamp=deleted))
    assert pod.phase == "Terminating"


def test_a_fresh_pod_without_status_is_pending_nothing() -> None:
    """A pod the API has not given a status yet has no phase, is not ready and has no restarts."""
    pod = pod_record(_pod(None))
    assert (pod.phase, pod.ready, pod.restarts, pod.waiting) == ("", False, 0, ())


def _deployment(strategy: k.V1DeploymentStrategy | None, status: k.V1DeploymentStatus | None) -> k.V1Deployment:
    return k.V1Deployment(
        metadata=_meta(generation=3, labels={"team": "shop"}),
        spec=k.V1DeploymentSpec(replicas=3, selector=SELECTOR, template=TEMPLATE, strategy=strategy),
        status=status,
    )


def test_a_deployment_carries_counters_template_and_rolling_update_settings() -> None:
    """A Deployment mid-rollout: counters, total pods of every revision, and maxSurge/maxUnavailable as written."""
    strategy = k.V1DeploymentStrategy(
        type="RollingUpdate", rolling_update=k.V1RollingUpdateDeployment(max_surge=1, max_unavailable="25%")
    )
    status = k.V1DeploymentStatus(
        replicas=4, ready_replicas=3, available_replicas=3, updated_replicas=1, observed_generation=3
    )
    w = workload_record("Deployment", _deployment(strategy, status))
    assert w.key == ("Deployment", "shop", "web")
    assert (w.replicas, w.ready, w.available, w.updated, w.total) == (3, 3, 3, 1, 4)
    assert (w.generation, w.observed_generation) == (3, 3)
    assert (w.labels, w.pod_labels, w.pod_annotations) == (
        {"team": "shop"},
        {"app": "web"},
        {"linkerd.io/inject": "enabled"},
    )
    assert (w.strategy, w.max_unavailable, w.max_surge, w.revision_settled) == ("RollingUpdate", "25%", "1", True)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        pytest.param(k.V1DeploymentStrategy(type="Recreate"), ("Recreate", None, None), id="recreate has no limits"),
        pytest.param(None, ("RollingUpdate", None, None), id="no strategy reads as the default rolling update"),
    ],
)
def test_a_deployment_strategy_without_rolling_update(
    strategy: k.V1DeploymentStrategy | None, expected: tuple[str, str | None, str | None]
) -> None:
    """Without a rollingUpdate block the limits are None (the API's defaults apply)."""
    w = workload_record("Deployment", _deployment(strategy, k.V1DeploymentStatus()))
    assert (w.strategy, w.max_unavailable, w.max_surge) == expected


def test_a_fresh_deployment_without_status_has_zero_counters_and_unknown_total() -> None:
    """A Deployment the controller has not seen yet: zero counters and total None."""
    w = workload_record("Deployment", _deployment(None, None))
    assert (w.ready, w.available, w.updated, w.observed_generation, w.total) == (0, 0, 0, 0, None)


def _statefulset(status: k.V1StatefulSetStatus | None) -> k.V1StatefulSet:
    strategy = k.V1StatefulSetUpdateStrategy(
        type="RollingUpdate", rolling_update=k.V1RollingUpdateStatefulSetStrategy(max_unavailable=2, partition=0)
    )
    return k.V1StatefulSet(
        metadata=_meta(generation=2),
        spec=k.V1StatefulSetSpec(
            replicas=2, selector=SELECTOR, service_name="web", template=TEMPLATE, update_strategy=strategy
        ),
        status=status,
    )


@pytest.mark.parametrize(
    ("current", "update", "settled"),
    [
        pytest.param("web-1", "web-1", True, id="statefulset with equal revisions is settled"),
        pytest.param("web-1", "web-2", False, id="statefulset mid-rollout is not settled"),
        pytest.param(None, "web-2", False, id="statefulset with only an update revision is not settled"),
        pytest.param(None, None, True, id="statefulset with neither revision is settled"),
    ],
)
def test_statefulset_revisions(current: str | None, update: str | None, settled: bool) -> None:
    """``revision_settled`` compares currentRevision with updateRevision."""
    status = k.V1StatefulSetStatus(
        replicas=2, ready_replicas=2, current_revision=current, update_revision=update, observed_generation=2
    )
    w = workload_record("StatefulSet", _statefulset(status))
    assert w.revision_settled is settled
    assert (w.replicas, w.ready, w.total) == (2, 2, 2)
    assert (w.strategy, w.max_unavailable, w.max_surge) == ("RollingUpdate", "2", None)


def test_an_ondelete_statefulset() -> None:
    """An OnDelete StatefulSet reports its strategy and no rolling-update limits."""
    obj = _statefulset(k.V1StatefulSetStatus(replicas=0))
    obj.spec.update_strategy = k.V1StatefulSetUpdateStrategy(type="OnDelete")
    w = workload_record("StatefulSet", obj)
    assert (w.strategy, w.max_unavailable, w.total) == ("OnDelete", None, 0)


def test_a_daemonset_counts_scheduled_pods_and_has_no_total() -> None:
    """A DaemonSet's counters come from the *NumberScheduled fields; total is None."""
    obj = k.V1DaemonSet(
        metadata=_meta(generation=1),
        spec=k.V1DaemonSetSpec(
            selector=SELECTOR,
            template=TEMPLATE,
            update_strategy=k.V1DaemonSetUpdateStrategy(
                type="RollingUpdate", rolling_update=k.V1RollingUpdateDaemonSet(max_surge=0, max_unavailable=1)
            ),
        ),
        status=k.V1DaemonSetStatus(
            current_number_scheduled=3,
            desired_number_scheduled=3,
            number_misscheduled=0,
            number_ready=2,
            number_available=2,
            updated_number_scheduled=3,
            observed_generation=1,
        ),
    )
    w = workload_record("DaemonSet", obj)
    assert (w.kind, w.replicas, w.ready, w.available, w.updated, w.total) == ("DaemonSet", 3, 2, 2, 3, None)
    assert (w.strategy, w.max_unavailable, w.max_surge, w.revision_settled) == ("RollingUpdate", "1", "0", True)


def test_a_budget_keeps_its_selector_and_limits_as_written() -> None:
    """A PodDisruptionBudget keeps matchLabels, disruptionsAllowed and minAvailable as text."""
    obj = k.V1PodDisruptionBudget(
        metadata=_meta(),
        spec=k.V1PodDisruptionBudgetSpec(selector=SELECTOR, min_available=2),
        status=k.V1PodDisruptionBudgetStatus(
            current_healthy=3, desired_healthy=2, disruptions_allowed=1, expected_pods=3
        ),
    )
    assert budget_record(obj) == Budget("shop", "web", {"app": "web"}, 1, max_unavailable=None, min_available="2")


def test_a_budget_without_status_allows_no_disruption() -> None:
    """A budget the controller has not evaluated yet allows nothing."""
    obj = k.V1PodDisruptionBudget(metadata=_meta(), spec=k.V1PodDisruptionBudgetSpec(max_unavailable="10%"))
    assert budget_record(obj) == Budget("shop", "web", {}, 0, max_unavailable="10%")


def test_a_namespace_keeps_labels_and_annotations() -> None:
    """A namespace keeps its name, labels and annotations."""
    obj = k.V1Namespace(metadata=k.V1ObjectMeta(name="shop", labels={"a": "1"}, annotations={"b": "2"}))
    assert namespace_record(obj) == Namespace("shop", {"a": "1"}, {"b": "2"})


def test_required_pod_anti_affinity_is_recorded() -> None:
    """A pod template with requiredDuringScheduling anti-affinity (values-ha.yaml) says so; without it, not."""
    term = k.V1PodAffinityTerm(label_selector=SELECTOR, topology_key="kubernetes.io/hostname")
    spec = k.V1PodSpec(
        containers=TEMPLATE.spec.containers,
        affinity=k.V1Affinity(
            pod_anti_affinity=k.V1PodAntiAffinity(required_during_scheduling_ignored_during_execution=[term])
        ),
    )
    ha = k.V1Deployment(
        metadata=_meta(),
        spec=k.V1DeploymentSpec(
            replicas=3, selector=SELECTOR, template=k.V1PodTemplateSpec(metadata=TEMPLATE.metadata, spec=spec)
        ),
    )
    assert workload_record("Deployment", ha).required_anti_affinity is True
    assert workload_record("Deployment", _deployment(None, None)).required_anti_affinity is False


def test_a_webhook_configuration_keeps_each_webhook_selectors_and_rules() -> None:
    """Every webhook's failure policy, namespace/object selectors and rules; an unset policy is the API's Fail."""
    obj = k.V1MutatingWebhookConfiguration(
        metadata=k.V1ObjectMeta(name="linkerd-proxy-injector-webhook-config"),
        webhooks=[
            k.V1MutatingWebhook(
                name="linkerd-proxy-injector.linkerd.io",
                admission_review_versions=["v1"],
                side_effects="None",
                client_config=k.AdmissionregistrationV1WebhookClientConfig(url="https://127.0.0.1/inject"),
                namespace_selector=k.V1LabelSelector(
                    match_expressions=[
                        k.V1LabelSelectorRequirement(
                            key="config.linkerd.io/admission-webhooks", operator="NotIn", values=["disabled"]
                        )
                    ]
                ),
                object_selector=k.V1LabelSelector(match_labels={"a": "b"}),
                rules=[
                    k.V1RuleWithOperations(
                        operations=["CREATE"], api_groups=[""], api_versions=["v1"], resources=["pods", "services"]
                    )
                ],
            ),
            k.V1MutatingWebhook(
                name="second.linkerd.io",
                admission_review_versions=["v1"],
                side_effects="None",
                client_config=k.AdmissionregistrationV1WebhookClientConfig(url="https://127.0.0.1/other"),
            ),
        ],
    )
    hook = webhook_record("mutating", obj)
    assert (hook.kind, hook.name, hook.failure_policies) == (
        "mutating",
        "linkerd-proxy-injector-webhook-config",
        ("Fail", "Fail"),
    )
    assert hook.entries == (
        WebhookEntry(
            "linkerd-proxy-injector.linkerd.io",
            "Fail",
            LabelSelector({}, (SelectorRequirement("config.linkerd.io/admission-webhooks", "NotIn", ("disabled",)),)),
            LabelSelector({"a": "b"}),
            (WebhookRule(("CREATE",), ("",), ("pods", "services")),),
        ),
        WebhookEntry("second.linkerd.io", "Fail", None, None, ()),
    )


def _as_json(obj: Any) -> Raw:
    """``obj`` as the API sends it (camelCase JSON), read through Raw."""
    return Raw(json.loads(json.dumps(k.ApiClient().sanitize_for_serialization(obj))))


def test_records_read_from_the_apis_json_equal_records_read_from_client_models() -> None:
    """LISTs and watches skip the client's models (Raw): every record comes out the same as from a model."""
    crashing = k.V1PodStatus(
        phase="Running",
        conditions=_ready("False"),
        container_statuses=[_status("app", restarts=4, waiting="CrashLoopBackOff")],
        init_container_statuses=[_status("linkerd-proxy", restarts=1)],
    )
    owned = [k.V1OwnerReference(api_version="apps/v1", kind="ReplicaSet", name="web-abc", uid="r")]
    pods = [
        _pod(k.V1PodStatus(phase="Running", conditions=_ready("True"))),
        _pod(crashing, owner_references=owned),
        _pod(None, deletion_timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
    ]
    for pod in pods:
        assert pod_record(_as_json(pod)) == pod_record(pod)
    strategy = k.V1DeploymentStrategy(
        type="RollingUpdate", rolling_update=k.V1RollingUpdateDeployment(max_surge=1, max_unavailable="25%")
    )
    status = k.V1DeploymentStatus(replicas=4, ready_replicas=3, available_replicas=3, updated_replicas=1)
    for deployment in (_deployment(strategy, status), _deployment(None, None)):
        assert workload_record("Deployment", _as_json(deployment)) == workload_record("Deployment", deployment)
    statefulset = _statefulset(k.V1StatefulSetStatus(replicas=2, current_revision="a", update_revision="b"))
    assert workload_record("StatefulSet", _as_json(statefulset)) == workload_record("StatefulSet", statefulset)
    budget = k.V1PodDisruptionBudget(
        metadata=_meta(),
        spec=k.V1PodDisruptionBudgetSpec(selector=SELECTOR, min_available=2),
        status=k.V1PodDisruptionBudgetStatus(
            current_healthy=3, desired_healthy=2, disruptions_allowed=1, expected_pods=3
        ),
    )
    assert budget_record(_as_json(budget)) == budget_record(budget)
    namespace = k.V1Namespace(metadata=k.V1ObjectMeta(name="shop", labels={"a": "1"}, annotations={"b": "2"}))
    assert namespace_record(_as_json(namespace)) == namespace_record(namespace)


def test_a_field_the_api_left_out_reads_as_none_and_string_maps_stay_dicts() -> None:
    """Raw answers a missing field with None, like a model, and keeps labels/annotations as plain dicts."""
    raw = Raw({"metadata": {"name": "web", "labels": {"app": "web"}, "ownerReferences": [{"kind": "ReplicaSet"}]}})
    assert raw.status is None
    assert raw.metadata.labels == {"app": "web"}
    assert raw.metadata.owner_references[0].kind == "ReplicaSet"
    assert raw.metadata.deletion_timestamp is None


class _Paged:
    """A LIST function as the client exposes it, answering JSON pages of two names; ``expire`` continue tokens
    answer 410 Gone (the API compacted past them), as many times as asked."""

    def __init__(self, names: list[str], expire: int = 0, status: int = 410) -> None:
        self.names, self.expire, self.status = names, expire, status
        self.requests: list[str | None] = []

    def __call__(self, *, limit: int, _continue: str | None, _preload_content: bool, **_kw: Any) -> Any:
        assert not _preload_content, "pages are read as JSON, never built into models"
        self.requests.append(_continue)
        if _continue is not None and self.expire:
            self.expire -= 1
            raise ApiException(status=self.status, reason="Expired")
        start = int(_continue or 0)
        end = start + 2
        meta = {"continue": str(end)} if end < len(self.names) else {}
        items = [{"metadata": {"name": n}} for n in self.names[start:end]]
        return SimpleNamespace(data=json.dumps({"metadata": meta, "items": items}).encode())


def _name(raw: Raw) -> str:
    return str(raw.metadata.name)


def test_a_list_whose_continue_token_expired_is_read_again_from_the_first_page_once() -> None:
    """410 Gone on the second page: the list starts over (the first page read twice, nothing doubled)."""
    call = _Paged(["a", "b", "c", "d", "e"], expire=1)
    with capture_logs() as logs:
        assert raw_records(call, _name) == ["a", "b", "c", "d", "e"]
    assert call.requests == [None, "2", None, "2", "4"]
    assert [e["event"] for e in logs] == ["list-restart"]


def test_a_continue_token_that_expires_again_fails_the_list() -> None:
    """A second 410 is not retried again: the error goes to the caller's error mapping."""
    call = _Paged(["a", "b", "c"], expire=2)
    with pytest.raises(ApiException) as info:
        raw_records(call, _name)
    assert info.value.status == 410
    assert call.requests == [None, "2", None, "2"]


def test_other_failures_of_a_page_are_not_answered_by_a_fresh_list() -> None:
    """Only an expired token restarts the list: a 500 on the second page fails it as before."""
    call = _Paged(["a", "b", "c"], expire=1, status=500)
    with pytest.raises(ApiException):
        raw_records(call, _name)
    assert call.requests == [None, "2"]


def test_a_list_is_read_and_converted_with_the_cyclic_collector_paused_and_resumed_after() -> None:
    """Parsing and converting pages makes no cycles: the collector, which would walk the records read so far
    again and again at 10,000 pods, is off while they are made, and on again once the list is read."""
    seen: list[bool] = []

    def convert(raw: Raw) -> str:
        seen.append(gc.isenabled())
        return _name(raw)

    assert gc.isenabled()
    assert raw_records(_Paged(["a", "b", "c"]), convert) == ["a", "b", "c"]
    assert seen == [False, False, False]
    assert gc.isenabled()


def test_the_collector_is_resumed_when_a_list_fails_and_left_off_when_it_was_off() -> None:
    """A failing page still resumes the collector; a caller that turned it off keeps it off."""
    assert gc.isenabled()
    with pytest.raises(ApiException):
        raw_records(_Paged(["a", "b", "c"], expire=1, status=500), _name)
    assert gc.isenabled()
    gc.disable()
    try:
        with without_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
