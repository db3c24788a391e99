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
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.ports import (
    Access,
    Budget,
    CertificateSecret,
    Container,
    CustomResourceDefinition,
    HelmRelease,
    Namespace,
    Pod,
    Webhook,
    Workload,
)
from upgrader.preflight.checks import (
    CONTROL_PLANE_DEPLOYMENTS,
    WEBHOOKS,
    Context,
    Snapshot,
    required_access,
    run_checks,
)
from upgrader.spec import DataPlane, Spec, ValuesSpec

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
CAT = default_catalog()
IDENTITY = make_identity(now=NOW)
CONFIG = "linkerdVersion: stable-2.13.7\nhighAvailability: true\nwebhookFailurePolicy: Fail\n"


def _pod(ns: str, name: str, version: str, app: str) -> Pod:
    return Pod(
        ns,
        name,
        labels={"linkerd.io/control-plane-ns": "linkerd", "app": app},
        containers=(Container("app", "a:1"), Container("linkerd-proxy", f"cr.l5d.io/linkerd/proxy:{version}")),
    )


def healthy(**changes: Any) -> Snapshot:
    releases = [
        HelmRelease("linkerd-crds", "linkerd", 1, "deployed", "linkerd-crds", "1.6.1"),
        HelmRelease(
            "linkerd-control-plane", "linkerd", 1, "deployed", "linkerd-control-plane", "1.12.7", "stable-2.13.7"
        ),
    ]
    pods = [_pod("shop", "web-1", "stable-2.13.7", "web"), _pod("payments", "ledger-1", "stable-2.13.7", "ledger")]
    snap = Snapshot(
        control_plane_namespace="linkerd",
        kubernetes_version="v1.27.4",
        installation=summarise("v1.27.4", releases, CONFIG, pods, "linkerd"),
        config_values={"linkerdVersion": "stable-2.13.7", "highAvailability": True, "webhookFailurePolicy": "Fail"},
        namespaces=[
            Namespace("kube-system", {"config.linkerd.io/admission-webhooks": "disabled"}),
            Namespace("linkerd"),
            Namespace("shop", annotations={"linkerd.io/inject": "enabled"}),
        ],
        workloads=[
            Workload(
                "Deployment",
                "linkerd",
                d,
                3,
                3,
                3,
                3,
                1,
                1,
                annotations={"linkerd.io/created-by": "linkerd/helm stable-2.13.7"},
            )
            for d in CONTROL_PLANE_DEPLOYMENTS
        ]
        + [
            Workload(
                "Deployment", "payments", "ledger", 2, 2, 2, 2, 1, 1, pod_labels={"app": "ledger"}, max_surge="0"
            )  # takes one pod down at a time (maxUnavailable 25% of 2 = 0, no surge: the controller makes it 1)
        ],
        webhooks=[Webhook(kind, name, ("Fail",)) for kind, name, _ in WEBHOOKS],
        budgets=[Budget("payments", "ledger", {"app": "ledger"}, 1, max_unavailable="1")],
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
    observed = Observed(CAT.parse(current), {"shop": {current: 1}, "payments": {current: 1}}, "v1.27.4")
    return make_plan(observed, CAT.parse(target), offering, CAT, spec or Spec())


def check(snapshot: Snapshot, plan: Plan | None = None, spec: Spec | None = None, **kw: Any) -> dict[str, Any]:
    spec = spec or Spec()
    results = run_checks(Context(snapshot, plan or _plan(spec=spec), CAT, spec, NOW, **kw))
    ids = [r.id for r in results]
    assert len(ids) == len(set(ids)) or any(i == "helm.release-state" for i in ids)
    return {r.id: r for r in results}


def test_a_healthy_ha_installation_passes_every_check() -> None:
    """Nothing fails on a healthy HA 2.13 install with a kube-system exemption and absorbable budgets."""
    results = check(healthy())
    assert {i: r.message for i, r in results.items() if r.result != "passed"} == {}
    assert len(results) >= 25


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
            lambda: _workloads(replicas=1, ready=1, available=1, updated=1),
            "control-plane.ha-replicas",
            "linkerd-identity",
            id="HA with a single replica is an error",
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
            _mutate(namespaces=[Namespace("kube-system"), Namespace("linkerd")]),
            "ha.kube-system-exempt",
            "kube-system",
            id="HA 2.13 without the kube-system label is an error",
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
