"""Preflight checks on observed snapshots: a healthy installation passes, each hazard is caught by id."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from e2e.fixtures.identity import make_identity
from upgrader.catalog import default_catalog
from upgrader.discovery import summarise
from upgrader.gatewayapi import ROUTE_CRDS, GatewayCrd
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.ports import (
    Access,
    Budget,
    CertificateSecret,
    Container,
    CustomResourceDefinition,
    HelmRelease,
    LabelSelector,
    Namespace,
    Pod,
    SelectorRequirement,
    Webhook,
    WebhookEntry,
    WebhookRule,
    Workload,
)
from upgrader.preflight.checks import (
    CONTROL_PLANE_DEPLOYMENTS,
    EXEMPT_LABEL,
    Context,
    Snapshot,
    kube_system_exempt,
    required_access,
    run_checks,
)
from upgrader.spec import DataPlane, Spec, ValuesSpec, Wave

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
CAT = default_catalog()
IDENTITY = make_identity(now=NOW)
# 2.13's values-ha.yaml has no highAvailability key: HA shows in replicas, PDBs and anti-affinity
CONFIG = "linkerdVersion: stable-2.13.7\nwebhookFailurePolicy: Fail\n"
NOT_DISABLED = SelectorRequirement(EXEMPT_LABEL, "NotIn", ("disabled",))
NOT_KUBE_SYSTEM = SelectorRequirement("kubernetes.io/metadata.name", "NotIn", ("kube-system", "cert-manager"))
POD_CREATE = WebhookRule(("CREATE",), ("",), ("pods", "services"))
COMPONENTS = {
    "linkerd-destination": "destination",
    "linkerd-identity": "identity",
    "linkerd-proxy-injector": "proxy-injector",
}
PDBS = {
    "linkerd-destination": "linkerd-dst",
    "linkerd-identity": "linkerd-identity",
    "linkerd-proxy-injector": "linkerd-proxy-injector",
}


def injector(*requirements: SelectorRequirement, policy: str = "Fail", objects: LabelSelector | None = None) -> Webhook:
    """linkerd-proxy-injector-webhook-config with ``requirements`` as its namespaceSelector (2.12+ default: both)."""
    entry = WebhookEntry(
        "linkerd-proxy-injector.linkerd.io",
        policy,
        LabelSelector(match_expressions=requirements or (NOT_DISABLED, NOT_KUBE_SYSTEM)),
        objects
        or LabelSelector(
            match_expressions=(SelectorRequirement("linkerd.io/control-plane-component", "DoesNotExist"),)
        ),
        (POD_CREATE,),
    )
    return Webhook("mutating", "linkerd-proxy-injector-webhook-config", (policy,), (entry,))


def validator(name: str, resources: tuple[str, ...], group: str) -> Webhook:
    """A Linkerd validating webhook as the real charts register it: custom resources only, the label as selector."""
    rule = WebhookRule(("CREATE", "UPDATE"), (group,), resources)
    short = name.removesuffix("-webhook-config")
    entry = WebhookEntry(f"{short}.linkerd.io", "Fail", LabelSelector(match_expressions=(NOT_DISABLED,)), None, (rule,))
    return Webhook("validating", name, ("Fail",), (entry,))


WEBHOOK_CONFIGS = [
    injector(),
    validator("linkerd-sp-validator-webhook-config", ("serviceprofiles",), "linkerd.io"),
    validator("linkerd-policy-validator-webhook-config", ("servers", "serverauthorizations"), "policy.linkerd.io"),
]


def _pod(ns: str, name: str, version: str, app: str) -> Pod:
    return Pod(
        ns,
        name,
        labels={"linkerd.io/control-plane-ns": "linkerd", "app": app},
        containers=(Container("app", "a:1"), Container("linkerd-proxy", f"cr.l5d.io/linkerd/proxy:{version}")),
    )


def _control_plane(replicas: int = 3) -> list[Workload]:
    """The three control-plane Deployments of a values-ha.yaml install: replicas, anti-affinity, component labels."""
    return [
        Workload(
            "Deployment",
            "linkerd",
            d,
            replicas,
            replicas,
            replicas,
            replicas,
            1,
            1,
            annotations={"linkerd.io/created-by": "linkerd/helm stable-2.13.7"},
            pod_labels={"linkerd.io/control-plane-component": COMPONENTS[d], "linkerd.io/control-plane-ns": "linkerd"},
            required_anti_affinity=replicas > 1,
        )
        for d in CONTROL_PLANE_DEPLOYMENTS
    ]


def _control_plane_budgets() -> list[Budget]:
    return [
        Budget("linkerd", PDBS[d], {"linkerd.io/control-plane-component": COMPONENTS[d]}, 1, max_unavailable="1")
        for d in CONTROL_PLANE_DEPLOYMENTS
    ]


def healthy(**changes: Any) -> Snapshot:
    """HA stable-2.13.7 as Linkerd documents it: values-ha.yaml, kube-system unlabelled, the chart's webhooks."""
    releases = [
        HelmRelease("linkerd-crds", "linkerd", 1, "deployed", "linkerd-crds", "1.6.1"),
        HelmRelease(
            "linkerd-control-plane", "linkerd", 1, "deployed", "linkerd-control-plane", "1.12.7", "stable-2.13.7"
        ),
    ]
    pods = [_pod("shop", "web-1", "stable-2.13.7", "web"), _pod("payments", "ledger-1", "stable-2.13.7", "ledger")]
    workloads = [
        *_control_plane(),
        Workload(
            "Deployment", "payments", "ledger", 2, 2, 2, 2, 1, 1, pod_labels={"app": "ledger"}, max_surge="0"
        ),  # takes one pod down at a time (maxUnavailable 25% of 2 = 0, no surge: the controller makes it 1)
    ]
    budgets = [*_control_plane_budgets(), Budget("payments", "ledger", {"app": "ledger"}, 1, max_unavailable="1")]
    snap = Snapshot(
        control_plane_namespace="linkerd",
        kubernetes_version="v1.27.4",
        installation=summarise("v1.27.4", releases, CONFIG, pods, "linkerd", workloads=workloads, budgets=budgets),
        config_values={"linkerdVersion": "stable-2.13.7", "webhookFailurePolicy": "Fail"},
        namespaces=[
            Namespace("kube-system", {"kubernetes.io/metadata.name": "kube-system"}),
            Namespace("linkerd"),
            Namespace("shop", annotations={"linkerd.io/inject": "enabled"}),
        ],
        workloads=workloads,
        webhooks=list(WEBHOOK_CONFIGS),
        budgets=budgets,
        crds=[CustomResourceDefinition("servers.policy.linkerd.io", ("v1alpha1", "v1beta1"), "v1beta1", ("v1beta1",))],
        access=[dataclasses.replace(a, allowed=True) for a in required_access("linkerd")],
        issuer=CertificateSecret("kubernetes.io/tls", {"crt.pem": IDENTITY.issuer_crt_pem}),
        trust_bundle=IDENTITY.trust_anchor_pem,
        user_values=IDENTITY.values(),
        meshed_pods=pods,
    )
    return dataclasses.replace(snap, **changes)


def _plan(target: str = "stable-2.14.10", current: str = "stable-2.13.7", spec: Spec | None = None) -> Plan:
    offering, _ = build_offering(CAT, None)
    observed = Observed(
        CAT.parse(current),
        {"shop": {current: 1}, "payments": {current: 1}},
        "v1.27.4",
        gateway_api=tuple(GatewayCrd(n) for n in ROUTE_CRDS),  # observed: none in the cluster
    )
    return make_plan(observed, CAT.parse(target), offering, CAT, spec or Spec())


def check(snapshot: Snapshot, plan: Plan | None = None, spec: Spec | None = None, **kw: Any) -> dict[str, Any]:
    spec = spec or Spec()
    results = run_checks(Context(snapshot, plan or _plan(spec=spec), CAT, spec, NOW, **kw))
    ids = [r.id for r in results]
    assert len(ids) == len(set(ids)) or any(i == "helm.release-state" for i in ids)
    return {r.id: r for r in results}


def test_a_healthy_ha_installation_passes_every_check() -> None:
    """Nothing fails on HA 2.13 as documented (kube-system unlabelled, no highAvailability flag)."""
    results = check(healthy())
    assert {i: r.message for i, r in results.items() if r.result != "passed"} == {}
    assert len(results) >= 25
    assert "PDB linkerd-dst" in results["control-plane.ha-replicas"].message, "HA recognised without the flag"
    assert "linkerd-proxy-injector-webhook-config" in results["ha.kube-system-exempt"].message


def _mutate(**changes: Any) -> Callable[[], Snapshot]:
    return lambda: healthy(**changes)


def _release(status: str) -> Snapshot:
    snap = healthy()
    assert snap.installation is not None
    inst = dataclasses.replace(
        snap.installation,
        releases=tuple(
            dataclasses.replace(r, status=status) if r.name == "linkerd-control-plane" else r
            for r in snap.installation.releases
        ),
    )
    return dataclasses.replace(snap, installation=inst)


def _workloads(**changes: Any) -> Snapshot:
    snap = healthy()
    return dataclasses.replace(
        snap,
        workloads=[dataclasses.replace(w, **changes) if w.name == "linkerd-identity" else w for w in snap.workloads],
    )


@pytest.mark.parametrize(
    ("make", "failing", "words"),
    [
        pytest.param(
            _mutate(kubernetes_version=None, errors={"api": "connection refused"}),
            "cluster.api-reachable",
            "connection refused",
            id="an unreachable API is an error",
        ),
        pytest.param(
            _mutate(kubernetes_version="v1.30.2"),
            "kubernetes-version",
            "1.21-1.28",
            id="Kubernetes newer than the target supports is an error",
        ),
        pytest.param(
            _mutate(access=[Access("patch", "apps", "deployments", "linkerd", False)]),
            "cluster.permissions",
            "patch deployments.apps in linkerd",
            id="a missing permission is listed by name",
        ),
        pytest.param(
            lambda: _release("pending-upgrade"),
            "helm.release-state",
            "stuck in pending-upgrade",
            id="a release stuck in pending-upgrade is an error with an unlock hint",
        ),
        pytest.param(
            lambda: _workloads(available=1),
            "control-plane.deployments",
            "linkerd-identity (1/3 available)",
            id="an unavailable control-plane deployment is an error",
        ),
        pytest.param(
            lambda: replace(
                _workloads(replicas=1, ready=1, available=1, updated=1),
                config_values={"linkerdVersion": "stable-2.14.10", "highAvailability": True},
            ),
            "control-plane.ha-replicas",
            "linkerd-identity",
            id="highAvailability true with a single replica is an error",
        ),
        pytest.param(
            _mutate(webhooks=[]),
            "control-plane.webhooks",
            "linkerd-proxy-injector-webhook-config",
            id="missing webhook configurations are an error",
        ),
        pytest.param(
            _mutate(trust_bundle=make_identity(now=NOW).trust_anchor_pem),
            "identity.issuer-signed-by-anchor",
            "",
            id="an issuer not signed by the cluster's anchor",
        ),
        pytest.param(
            _mutate(issuer=CertificateSecret("", {"crt.pem": make_identity(now=NOW, issuer_days=10).issuer_crt_pem})),
            "identity.issuer-validity",
            "in 10 days",
            id="an issuer expiring in 10 days is an error",
        ),
        pytest.param(
            _mutate(meshed_pods=[_pod("legacy", "old-1", "stable-2.11.5", "old")]),
            "data-plane.version-skew",
            "legacy/old-1 (stable-2.11.5)",
            id="proxies two majors behind are an error",
        ),
        pytest.param(
            _mutate(render_error="nil pointer evaluating interface {}.podDisruptionBudget"),
            "values.render",
            "podDisruptionBudget",
            id="values that do not render the target chart",
        ),
        pytest.param(_mutate(crds=[]), "crds.present", "no Linkerd CRD", id="missing CRDs are an error"),
        pytest.param(
            _mutate(webhooks=[injector(NOT_DISABLED), *WEBHOOK_CONFIGS[1:]]),
            "ha.kube-system-exempt",
            "linkerd-proxy-injector-webhook-config",
            id="an injector whose selector does not skip kube-system is an error",
        ),
        pytest.param(
            _mutate(errors={"webhooks": "mutatingwebhookconfigurations is forbidden"}),
            "ha.kube-system-exempt",
            "cannot check",
            id="unreadable webhooks make the kube-system check fail, not pass",
        ),
        pytest.param(
            _mutate(
                namespaces=[
                    Namespace("kube-system", {"config.linkerd.io/admission-webhooks": "disabled"}),
                    Namespace("linkerd", annotations={"linkerd.io/inject": "enabled"}),
                ]
            ),
            "ha.control-plane-not-injected",
            "linkerd.io/inject=enabled",
            id="an injection-enabled control-plane namespace is an error",
        ),
        pytest.param(
            _mutate(budgets=[Budget("payments", "ledger", {"app": "ledger"}, 0, max_unavailable="0")]),
            "disruption.pdb-allows-restart",
            "payments/ledger",
            id="a budget allowing no disruption on a restarted workload is an error",
        ),
        pytest.param(
            _mutate(errors={"helm": "secrets is forbidden"}),
            "install.method",
            "cannot check",
            id="an observation that was refused makes its checks fail, not pass",
        ),
    ],
)
def test_each_hazard_is_caught(make: Callable[[], Snapshot], failing: str, words: str) -> None:
    """Each hazard fails its check with a message naming the object and a hint."""
    results = check(make())
    result = results[failing]
    assert result.result in ("error", "warning"), result
    assert words in result.message
    assert result.hint


def test_cli_installed_mesh_is_reported_with_the_migration_path() -> None:
    """No Helm release plus linkerd/cli created-by: install.method explains how to move to Helm."""
    snap = healthy()
    inst = summarise("v1.27.4", [], CONFIG, snap.meshed_pods, "linkerd")
    cli = [
        dataclasses.replace(w, annotations={"linkerd.io/created-by": "linkerd/cli stable-2.13.7"})
        for w in snap.workloads
    ]
    result = check(dataclasses.replace(snap, installation=inst, workloads=cli))["install.method"]
    assert result.result == "error"
    assert "linkerd CLI" in result.message
    assert "migrate to Helm" in result.hint


def test_user_values_removed_by_a_later_major_are_reported() -> None:
    """Across 2.16, a user-set proxyInit.resources is reported as removed (a warning, not a block)."""
    spec = Spec(waivers=["kubernetes-version"])
    snap = healthy(user_values={**IDENTITY.values(), "proxyInit": {"resources": {"cpu": {"limit": "1"}}}})
    result = check(snap, _plan("edge-24.8.2", "stable-2.13.7", spec), spec)["values.migrations"]
    assert (result.result, result.severity) == ("warning", "warning")
    assert "proxyInit.resources is removed in 2.16" in result.message


def test_reuse_strategy_misses_keys_new_in_the_target_major() -> None:
    """With values strategy reuse, 2.15 -> 2.16 reports the new controller.podDisruptionBudget key."""
    spec = Spec(values=ValuesSpec(strategy="reuse"), waivers=["kubernetes-version"])
    result = check(healthy(), _plan("edge-24.8.2", "edge-24.2.4", spec), spec)["values.required"]
    assert result.result == "error"
    assert "controller.podDisruptionBudget.maxUnavailable" in result.message


def test_rollback_across_a_storage_version_refuses_the_crd_step() -> None:
    """Rolling back while servers are stored as v1beta3 fails crds.rollback-stored-versions."""
    stored = [
        CustomResourceDefinition(
            "servers.policy.linkerd.io", ("v1beta1", "v1beta2", "v1beta3"), "v1beta3", ("v1beta2", "v1beta3")
        )
    ]
    older = [CustomResourceDefinition("servers.policy.linkerd.io", ("v1beta1", "v1beta2"), "v1beta2")]
    spec = Spec(waivers=["kubernetes-version"])
    result = check(healthy(crds=stored, target_crds=older), _plan("edge-24.2.4", "edge-24.8.2", spec), spec)[
        "crds.rollback-stored-versions"
    ]
    assert result.result == "error"
    assert "servers.policy.linkerd.io stores v1beta3" in result.message


def test_waived_checks_do_not_block_and_say_so() -> None:
    """A spec waiver marks the failing check waived instead of removing it."""
    spec = Spec(waivers=["disruption.pdb-allows-restart"])
    snap = healthy(budgets=[Budget("payments", "ledger", {"app": "ledger"}, 0, max_unavailable="0")])
    result = check(snap, spec=spec)["disruption.pdb-allows-restart"]
    assert (result.result, result.waived) == ("error", True)


def test_the_budget_finding_hints_what_the_workloads_own_strategy_accepts() -> None:
    """ledger has maxSurge 0: maxUnavailable 0 alone would be rejected by the API, so the hint adds surge."""
    snap = healthy(budgets=[Budget("payments", "ledger", {"app": "ledger"}, 0, max_unavailable="0")])
    result = check(snap)["disruption.pdb-allows-restart"]
    assert "set Deployment payments/ledger's maxSurge to at least 1 and maxUnavailable to 0" in result.hint


def test_plan_warnings_are_preflight_warnings() -> None:
    """A wave that restarts nothing (a plan warning) shows in preflight (and so in --dry-run) without blocking."""
    spec = Spec(
        data_plane=DataPlane(waves=[Wave(name="canary", namespaces=["idle"]), Wave(name="rest", namespaces=["*"])])
    )
    observed = Observed(
        CAT.parse("stable-2.13.7"),
        {"shop": {"stable-2.13.7": 1}},
        "v1.27.4",
        namespaces=frozenset({"linkerd", "shop", "idle"}),
    )
    plan = make_plan(observed, CAT.parse("stable-2.14.10"), build_offering(CAT, None)[0], CAT, spec)
    result = check(healthy(), plan, spec)["plan.warnings"]
    assert (result.result, result.severity) == ("warning", "warning")
    assert "wave canary restarts nothing: idle has no meshed pod" in result.message


def test_excluding_the_namespace_clears_the_budget_finding() -> None:
    """A namespace the spec excludes is not restarted, so its budget does not matter."""
    spec = Spec(data_plane=DataPlane(exclude_namespaces=["payments"]))
    snap = healthy(budgets=[Budget("payments", "ledger", {"app": "ledger"}, 0, max_unavailable="0")])
    assert check(snap, _plan(spec=spec), spec)["disruption.pdb-allows-restart"].result == "passed"


def test_a_surge_only_rollout_is_not_stalled_by_a_zero_budget() -> None:
    """A Deployment that surges (maxUnavailable 0 after rounding) never takes a pod down: the budget absorbs it."""
    snap = healthy(budgets=[Budget("payments", "ledger", {"app": "ledger"}, 0, max_unavailable="0")])
    snap = replace(snap, workloads=[replace(w, max_surge=None) if w.name == "ledger" else w for w in snap.workloads])
    assert check(snap)["disruption.pdb-allows-restart"].result == "passed"


def test_a_2_10_control_plane_has_no_policy_validator_webhook_to_miss() -> None:
    """2.10 shipped the injector and the sp-validator only; the policy validator came in 2.11."""
    snap = healthy()
    inst = dataclasses.replace(snap.installation, control_plane_version="stable-2.10.2")
    hooks = [w for w in snap.webhooks if w.name != "linkerd-policy-validator-webhook-config"]
    assert (
        check(dataclasses.replace(snap, installation=inst, webhooks=hooks))["control-plane.webhooks"].result == "passed"
    )
    inst = dataclasses.replace(snap.installation, control_plane_version="stable-2.11.5")
    result = check(dataclasses.replace(snap, installation=inst, webhooks=hooks))["control-plane.webhooks"]
    assert result.result == "error"
    assert "linkerd-policy-validator-webhook-config" in result.message


def test_a_finished_job_pod_two_majors_behind_is_no_skew() -> None:
    """A Job's pod that finished long ago on an old proxy runs nothing: not a version skew."""
    done = dataclasses.replace(_pod("edge", "report-1", "stable-2.11.5", "report"), phase="Succeeded")
    assert check(healthy(meshed_pods=[done]))["data-plane.version-skew"].result == "passed"
    running = dataclasses.replace(done, phase="Running")
    assert check(healthy(meshed_pods=[running]))["data-plane.version-skew"].result == "error"


KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}
LABELLED = {**KUBE_SYSTEM, EXEMPT_LABEL: "disabled"}
ONLY_LABEL = injector(NOT_DISABLED)  # the 2.10/2.11 chart's selector, or a 2.12+ one overridden to it


@pytest.mark.parametrize(
    ("webhooks", "labels", "blocked"),
    [
        pytest.param(WEBHOOK_CONFIGS, {}, False, id="the 2.12+ chart selectors skip an unlabelled kube-system by name"),
        pytest.param([ONLY_LABEL], KUBE_SYSTEM, True, id="an injector excluding only the label catches kube-system"),
        pytest.param([ONLY_LABEL], LABELLED, False, id="labelling kube-system exempts it from that injector"),
        pytest.param([injector(NOT_DISABLED, policy="Ignore")], {}, False, id="failurePolicy Ignore cannot block"),
        pytest.param(
            WEBHOOK_CONFIGS[1:], {}, False, id="the validators select only Linkerd custom resources, never pods"
        ),
        pytest.param(
            [injector(NOT_DISABLED, objects=LabelSelector({"linkerd.io/inject": "enabled"}))],
            KUBE_SYSTEM,
            True,
            id="an objectSelector requiring a label does not exempt kube-system (its pods may carry it)",
        ),
        pytest.param(
            [dataclasses.replace(ONLY_LABEL, name="other-injector")],
            {},
            False,
            id="a webhook not Linkerd's is not judged",
        ),
        pytest.param(
            [replace(ONLY_LABEL, entries=(replace(ONLY_LABEL.entries[0], namespace_selector=None),))],
            LABELLED,
            True,
            id="a missing namespaceSelector selects every namespace, labelled or not",
        ),
    ],
)
def test_kube_system_exemption_is_judged_on_the_live_selectors(
    webhooks: list[Webhook], labels: dict[str, str], blocked: bool
) -> None:
    """ha.kube-system-exempt fails only when a Linkerd webhook with Fail would really intercept kube-system's pods."""
    result = kube_system_exempt(webhooks, labels)
    assert (result.result == "error") is blocked, result


def test_the_kube_system_failure_shows_the_object_selector_and_an_unknown_operator() -> None:
    """An objectSelector is shown as narrowing, not exempting; an operator upgrader cannot judge is named."""
    unknown = SelectorRequirement("kubernetes.io/metadata.name", "Foo", ("kube-system",))
    hook = injector(unknown, objects=LabelSelector({"linkerd.io/inject": "enabled"}))
    result = kube_system_exempt([hook], {})
    assert result.result == "error"
    assert "operator Foo unknown to upgrader: counted as matching" in result.message
    assert "its objectSelector {linkerd.io/inject=enabled} only narrows which pods" in result.message


def test_the_kube_system_failure_names_the_webhook_why_and_both_fixes() -> None:
    """The message names the webhook and its selector matching kube-system; the hint gives the label and the chart."""
    result = kube_system_exempt([ONLY_LABEL], {})
    assert "linkerd-proxy-injector-webhook-config (linkerd-proxy-injector.linkerd.io)" in result.message
    assert f"{{{EXEMPT_LABEL} NotIn [disabled]}} matches kube-system" in result.message
    assert "kubernetes.io/metadata.name=kube-system" in result.message
    assert f"kubectl label namespace kube-system {EXEMPT_LABEL}=disabled" in result.hint
    assert "proxyInjector.namespaceSelector" in result.hint


def test_when_the_label_would_not_help_the_hint_does_not_offer_it() -> None:
    """A selector with no label expression ignores the label: the hint gives only the selector and Ignore."""
    everything = injector(SelectorRequirement("kubernetes.io/metadata.name", "NotIn", ("cert-manager",)))
    result = kube_system_exempt([everything], {})
    assert result.result == "error"
    assert "kubectl label" not in result.hint
    assert "proxyInjector.namespaceSelector" in result.hint


def test_ha_replicas_runs_only_when_ha_is_recognised() -> None:
    """A single-replica install (no flag, no PDBs) is not HA: control-plane.ha-replicas is not run."""
    workloads = _control_plane(replicas=1)
    inst = summarise("v1.27.4", [], CONFIG, [], "linkerd", workloads=workloads)
    results = check(healthy(workloads=workloads, budgets=[], installation=inst))
    assert inst.high_availability is False
    assert "control-plane.ha-replicas" not in results


def test_pending_control_plane_pods_fail_pods_ready_even_when_the_deployment_counters_look_fine() -> None:
    """A failed upgrade's new pods stay Pending (unschedulable) while the old ReplicaSet serves: not ready."""
    snap = healthy()
    stuck = [
        dataclasses.replace(
            _pod("linkerd", f"linkerd-destination-new-{i}", "stable-2.14.10", "destination"), phase="Pending"
        )
        for i in range(3)
    ]
    serving = dataclasses.replace(
        _pod("linkerd", "linkerd-destination-old-0", "stable-2.13.7", "destination"), phase="Running", ready=True
    )
    result = check(dataclasses.replace(snap, meshed_pods=[*snap.meshed_pods, *stuck, serving]))[
        "control-plane.pods-ready"
    ]
    assert result.result == "error"
    assert "linkerd-destination-new-0 (Pending)" in result.message
    assert "linkerd-destination-old-0" not in result.message
    assert "helm history linkerd-control-plane" in result.hint


def test_pods_of_other_namespaces_do_not_make_the_control_plane_unready() -> None:
    """Only the control-plane namespace's pods count for control-plane.pods-ready."""
    snap = healthy()
    elsewhere = dataclasses.replace(_pod("shop", "web-new", "stable-2.13.7", "web"), phase="Pending")
    result = check(dataclasses.replace(snap, meshed_pods=[*snap.meshed_pods, elsewhere]))["control-plane.pods-ready"]
    assert result.result == "passed"


def test_a_forward_crd_step_that_drops_a_stored_version_is_an_error() -> None:
    """CRDs store v1 (a newer chart was installed): a CRD step whose chart lacks v1 fails crds.stored-versions."""
    stored = [CustomResourceDefinition("servers.policy.linkerd.io", ("v1beta1", "v1"), "v1", ("v1beta1", "v1"))]
    older = [CustomResourceDefinition("servers.policy.linkerd.io", ("v1beta1",), "v1beta1")]
    result = check(healthy(crds=stored, crd_steps={"1.8.0": older}))["crds.stored-versions"]
    assert result.result == "error"
    assert "linkerd-crds 1.8.0: servers.policy.linkerd.io stores v1" in result.message
    serving = [CustomResourceDefinition("servers.policy.linkerd.io", ("v1beta1", "v1"), "v1")]
    assert check(healthy(crds=stored, crd_steps={"1.8.0": serving}))["crds.stored-versions"].result == "passed"


def test_the_stored_versions_checks_cover_the_gateway_api_crds_as_the_executor_does() -> None:
    """httproutes stores v1 (served by the live CRD): a CRD step or a CRD rollback to a chart whose httproutes lacks
    v1 fails, as the executor's own check (crds_stored) would refuse it half-way."""
    http = "httproutes.gateway.networking.k8s.io"
    stored = [
        CustomResourceDefinition("servers.policy.linkerd.io", ("v1beta3",), "v1beta3", ("v1beta3",)),
        CustomResourceDefinition(http, ("v1beta1", "v1"), "v1", ("v1beta1", "v1")),
    ]
    older = [
        CustomResourceDefinition("servers.policy.linkerd.io", ("v1beta3",), "v1beta3"),
        CustomResourceDefinition(http, ("v1beta1",), "v1beta1"),
    ]
    result = check(healthy(crds=stored, crd_steps={"1.8.0": older}))["crds.stored-versions"]
    assert result.result == "error"
    assert f"{http} stores v1" in result.message
    spec = Spec(waivers=["kubernetes-version"])
    result = check(healthy(crds=stored, target_crds=older), _plan("edge-24.2.4", "edge-24.8.2", spec), spec)[
        "crds.rollback-stored-versions"
    ]
    assert result.result == "error"
    assert f"{http} stores v1" in result.message


def test_no_crd_step_that_changes_the_chart_means_no_stored_versions_check() -> None:
    assert "crds.stored-versions" not in check(healthy())


FOREIGN_HTTP = CustomResourceDefinition(
    "httproutes.gateway.networking.k8s.io",
    ("v1", "v1beta1"),
    "v1",
    annotations={
        "meta.helm.sh/release-name": "gateway-api",
        "meta.helm.sh/release-namespace": "gateway-system",
        "gateway.networking.k8s.io/bundle-version": "v1.2.1",
    },
)


def test_gateway_api_check_passes_while_the_crds_are_as_the_plan_saw_them() -> None:
    """The plan's decision stands (it was made with linkerd-crds' user values) while the CRDs are unchanged."""
    result = check(healthy())["crds.gateway-api"]
    assert result.result == "passed", result.message
    assert "httproutes: absent" in result.message


def test_gateway_api_check_fails_when_the_crds_changed_since_the_plan() -> None:
    """Another installer put httproutes in after the plan: plan again, nothing is sent on an old decision."""
    snap = healthy()
    snap = replace(snap, crds=[*snap.crds, FOREIGN_HTTP])
    result = check(snap)["crds.gateway-api"]
    assert result.result == "error"
    assert "changed since the plan was made" in result.message
    assert "gateway-system/gateway-api" in result.message
    assert "plan again" in result.hint


def test_gateway_api_check_before_a_later_hop_judges_the_crds_the_earlier_hops_installed() -> None:
    """Hop 1 of a two-hop run installed httproutes (none when planned): before hop 2 the check decides again against
    the live CRDs and passes while that decision agrees with the plan's; a foreign one appearing still fails."""
    plan = _plan(target="edge-24.2.4")
    assert plan.hops[0].crds_values == {"enableHttpRoutes": True}, plan.hops[0]
    rest = plan.model_copy(update={"hops": plan.hops[1:]})
    linkerds = replace(
        FOREIGN_HTTP,
        annotations={
            "meta.helm.sh/release-name": "linkerd-crds",
            "meta.helm.sh/release-namespace": "linkerd",
            "gateway.networking.k8s.io/bundle-version": "v0.7.1-dev",
        },
    )
    snap = healthy()
    ours = check(replace(snap, crds=[*snap.crds, linkerds]), plan=rest, plan_offset=1)["crds.gateway-api"]
    assert ours.result == "passed", ours.message
    foreign = check(replace(snap, crds=[*snap.crds, FOREIGN_HTTP]), plan=rest, plan_offset=1)["crds.gateway-api"]
    assert foreign.result == "error"
    assert "hop 2 (stable-2.14.10 -> edge-24.2.4)" in foreign.message


def test_gateway_api_check_before_a_later_hop_keeps_the_users_switches_off() -> None:
    """linkerd-crds' user values switched httproutes off and none is installed: before hop 2 the check, deciding
    again against the live CRDs, takes the plan's switches as the user's and passes (not "install them")."""
    offering, _ = build_offering(CAT, None)
    observed = Observed(
        CAT.parse("stable-2.13.7"),
        {"shop": {"stable-2.13.7": 1}},
        "v1.27.4",
        gateway_api=tuple(GatewayCrd(n) for n in ROUTE_CRDS),
        crds_values={"enableHttpRoutes": False},
    )
    plan = make_plan(observed, CAT.parse("edge-24.2.4"), offering, CAT, Spec())
    assert [h.crds_values for h in plan.hops] == [{"enableHttpRoutes": False}] * 2
    rest = plan.model_copy(update={"hops": plan.hops[1:]})
    result = check(healthy(), plan=rest, plan_offset=1)["crds.gateway-api"]
    assert result.result == "passed", result.message


def test_gateway_api_check_decides_an_offline_plan_against_the_live_crds() -> None:
    """An offline plan sends no Gateway API values: preflight decides against the live CRDs and asks for a new plan."""
    offering, _ = build_offering(CAT, None)
    offline = make_plan(
        Observed(CAT.parse("stable-2.13.7"), {"shop": {"stable-2.13.7": 1}}, "v1.27.4"),
        CAT.parse("stable-2.14.10"),
        offering,
        CAT,
        Spec(),
    )
    result = check(healthy(), plan=offline)["crds.gateway-api"]
    assert result.result == "error"
    assert "offline" in result.message
    assert "enableHttpRoutes" in result.message
