"""The 2.14 -> 2.20 traps: Gateway API CRDs kept, handed over or left alone; jaeger refused; Kubernetes per hop."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from upgrader.catalog import Catalog, GatewayApi, RemovedExtension, default_catalog
from upgrader.cli.report import values_header, values_lines
from upgrader.dataplane import assess, meshed
from upgrader.discovery import Installation, proxy_version
from upgrader.errors import InputError
from upgrader.gatewayapi import ROUTE_CRDS, GatewayCrd, bundle_key, crd_rollback_refusal, observe, renders
from upgrader.planning import KeepRelease, Observed, Plan, UpgradeRelease, build_offering, make_plan
from upgrader.ports import Container, CustomResourceDefinition, DataPlaneView, HelmRelease, Pod, Workload
from upgrader.preflight.checks import Context, Snapshot, check_gateway_api, check_removed_extensions
from upgrader.rendering import render
from upgrader.runs import check_plan_file
from upgrader.spec import Spec
from upgrader.values import switched

HTTP, GRPC, TLS, TCP = ROUTE_CRDS
OLD = {HTTP: "enableHttpRoutes", GRPC: "enableHttpRoutes"}
WIDE = {**OLD, TLS: "enableTlsRoutes", TCP: "enableTcpRoutes"}
# What the real linkerd-crds charts do (checked at each marker tag's charts/linkerd-crds), for the catalog.
V1BETA1 = {HTTP: ["v1beta1"]}
V1ALPHA2 = {**V1BETA1, GRPC: ["v1alpha2"]}
V1 = {HTTP: ["v1"], GRPC: ["v1"]}
FACTS = {
    14: GatewayApi(crds={HTTP: "enableHttpRoutes"}, bundle="v0.7.1-dev"),
    15: GatewayApi(crds={HTTP: "enableHttpRoutes"}, bundle="v0.7.1-dev", needs_served=V1BETA1),
    16: GatewayApi(crds=OLD, bundle="v0.7.1", needs_served=V1ALPHA2),
    17: GatewayApi(crds=WIDE, bundle="v0.7.1", needs_served=V1ALPHA2),
    18: GatewayApi(crds=WIDE, install_value="installGatewayAPI", keep=True, bundle="v1.1.1", needs_served=V1),
    19: GatewayApi(
        crds=WIDE,
        install_value="installGatewayAPI",
        default=False,
        keep=True,
        bundle="v1.1.1",
        required=[HTTP, GRPC],
        needs_served=V1,
    ),
}
FACTS[20] = FACTS[19]  # 2.20's linkerd-crds treats them as 2.19's does
JAEGER = RemovedExtension(chart="linkerd-jaeger", extension="jaeger", note="jaeger-removed-2.19")


def _catalog() -> Catalog:
    base = default_catalog()
    majors = [
        m.model_copy(
            update={
                "gateway_api": FACTS.get(m.major, m.gateway_api),
                "removed_extensions": [JAEGER] if m.major == 19 else m.removed_extensions,
            }
        )
        for m in base.majors
    ]
    return base.model_copy(update={"majors": majors})


CAT = _catalog()
OFFLINE, _ = build_offering(CAT, None)
FROM, TO = "stable-2.14.10", "edge-26.6.3"
ALL_ON = {"installGatewayAPI": True, "enableHttpRoutes": True, "enableTcpRoutes": True, "enableTlsRoutes": True}
ALL_OFF = {k: False for k in ALL_ON}
K8S = "v1.31.2"  # inside 2.17's to 2.20's ranges, above 2.14-2.16's (waived where the path crosses them)


def linkerd_managed(*names: str, bundle: str = "v0.7.1-dev") -> tuple[GatewayCrd, ...]:
    return tuple(
        GatewayCrd(n, present=True, release="linkerd-crds", release_namespace="linkerd", bundle=bundle)
        if n in names
        else GatewayCrd(n)
        for n in ROUTE_CRDS
    )


def foreign(release: str | None = "gateway-api") -> tuple[GatewayCrd, ...]:
    ns = "gateway-system" if release else None
    return tuple(
        GatewayCrd(n, present=True, release=release, release_namespace=ns, bundle="v1.2.1") for n in ROUTE_CRDS
    )


def plan(
    crds: tuple[GatewayCrd, ...] | None,
    *,
    choice: str = "auto",
    frm: str = FROM,
    to: str = TO,
    kubernetes: str | None = K8S,
    waive: bool = True,
    extensions: tuple[str, ...] = (),
    labels: dict[str, dict[str, str]] | None = None,
    acks: frozenset[str] = frozenset(),
    crds_values: dict[str, Any] | None = None,
    extension_releases: dict[str, tuple[str, str]] | None = None,
    view: DataPlaneView | None = None,
) -> Plan:
    spec = Spec.model_validate({"gatewayAPI": choice, "waivers": ["kubernetes-version"] if waive else []})
    observed = Observed(
        control_plane=CAT.parse(frm),
        kubernetes=kubernetes,
        gateway_api=crds,
        extensions=extensions,
        namespace_labels=labels or {},
        crds_values=crds_values or {},
        extension_releases=extension_releases or {},
        data_plane_view=view,
    )
    return make_plan(observed, CAT.parse(to), OFFLINE, CAT, spec, acks=acks)


def test_observe_reads_owner_bundle_policy_and_versions_and_lists_absent_ones() -> None:
    """A CRD listing becomes the four route CRDs: owner from meta.helm.sh/*, bundle, policy; missing ones absent."""
    listing = [
        CustomResourceDefinition(
            HTTP,
            served=("v1", "v1beta1"),
            storage="v1",
            annotations={
                "meta.helm.sh/release-name": "linkerd-crds",
                "meta.helm.sh/release-namespace": "linkerd",
                "gateway.networking.k8s.io/bundle-version": "v1.1.1",
                "helm.sh/resource-policy": "keep",
            },
        ),
        CustomResourceDefinition(GRPC, served=("v1",), storage="v1"),
        CustomResourceDefinition("servers.policy.linkerd.io", served=("v1beta3",), storage="v1beta3"),
    ]
    http, grpc, tls, tcp = observe(listing)
    assert http.owned_by("linkerd-crds", "linkerd")
    assert http.bundle == "v1.1.1"
    assert http.policy == "keep"
    assert http.served == ("v1", "v1beta1")
    assert http.storage == "v1"
    assert grpc.present
    assert grpc.owner() == "no Helm release"
    assert not tls.present
    assert not tcp.present
    assert tls.owner() == "absent"


def test_auto_keeps_linkerd_managed_crds_managed_on_every_hop_from_2_14_to_2_20() -> None:
    """Linkerd-managed CRDs: each hop sends their switches on; installGatewayAPI: true from 2.18, so 2.19 keeps them."""
    result = plan(linkerd_managed(HTTP))
    assert result.refused is None, result.refused
    assert [h.crds_values for h in result.hops] == [
        {"enableHttpRoutes": True},
        {"enableHttpRoutes": True},
        {"enableHttpRoutes": True, "enableTcpRoutes": True, "enableTlsRoutes": True},
        ALL_ON,
        ALL_ON,
        ALL_ON,
    ]
    assert not result.warnings
    last = result.hops[-1]
    assert any(n["id"] == "gateway-api-2.20" and "stays managed by linkerd-crds" in n["text"] for n in last.notes)
    crds_step = next(s for s in last.steps if isinstance(s, UpgradeRelease) and s.release == "linkerd-crds")
    assert "installGatewayAPI: true" in crds_step.detail


def test_auto_never_takes_over_crds_another_release_owns() -> None:
    """CRDs of another Helm release (or of none) get their switches off on every hop that could install them."""
    for crds in (foreign(), foreign(None)):
        result = plan(crds)
        assert result.refused is None, result.refused
        assert result.hops[0].crds_values == {"enableHttpRoutes": False}
        assert result.hops[2].crds_values == {
            "enableHttpRoutes": False,
            "enableTcpRoutes": False,
            "enableTlsRoutes": False,
        }
        assert all(h.crds_values == ALL_OFF for h in result.hops[3:])
        assert "left untouched" in result.hops[4].notes[-1]["text"]


def test_auto_turns_off_a_switch_the_user_values_set_on_2_18_and_later() -> None:
    """A per-CRD switch wins over installGatewayAPI in 2.18+: one the user set is sent too."""
    result = plan(foreign(), crds_values={"enableHttpRoutes": True})
    assert result.hops[3].crds_values == ALL_OFF


def test_auto_with_no_gateway_api_crds_lets_linkerd_crds_install_and_keep_them() -> None:
    """None in the cluster: auto installs them as the chart does by default, and keeps them managed past 2.19."""
    result = plan(tuple(GatewayCrd(n) for n in ROUTE_CRDS))
    assert result.refused is None, result.refused
    assert result.hops[0].crds_values == {"enableHttpRoutes": True}
    assert all(h.crds_values == ALL_ON for h in result.hops[3:])
    assert "installed by linkerd-crds" in result.hops[0].notes[-1]["text"]


@pytest.mark.parametrize(
    ("choice", "user"),
    [("auto", {"enableHttpRoutes": False}), ("auto", {"installGatewayAPI": False}), ("external", {})],
)
def test_absent_crds_and_a_hop_into_2_19_is_refused_naming_both_ways_out(choice: str, user: dict[str, Any]) -> None:
    """No Gateway API CRDs and nobody to install them (the user switched them off, or external): the 2.19 hop is
    refused with both choices named."""
    result = plan(tuple(GatewayCrd(n) for n in ROUTE_CRDS), choice=choice, crds_values=user)
    assert result.refused is not None
    assert result.refused.code == "gateway-api-missing"
    reason = result.refused.reason
    assert reason.startswith("hop 5 (")
    assert "2.19's linkerd-crds no longer installs them" in reason
    assert "gatewayAPI: linkerd" in reason
    assert "install them yourself" in reason


def test_absent_crds_with_gateway_api_linkerd_are_installed_by_linkerd_crds() -> None:
    """gatewayAPI: linkerd installs absent CRDs and keeps them managed through 2.20."""
    result = plan(tuple(GatewayCrd(n) for n in ROUTE_CRDS), choice="linkerd")
    assert result.refused is None
    assert result.hops[-1].crds_values == ALL_ON
    assert "installed by linkerd-crds" in result.hops[0].notes[-1]["text"]


def test_gateway_api_linkerd_refuses_crds_owned_elsewhere() -> None:
    """gatewayAPI: linkerd with another release's CRDs is refused: they are never taken over."""
    result = plan(foreign(), choice="linkerd")
    assert result.refused is not None
    assert result.refused.code == "gateway-api-owner"
    assert "gateway-system/gateway-api" in result.refused.reason


def test_external_hands_over_only_from_a_chart_with_the_keep_policy() -> None:
    """external: kept managed while dropping them would delete them (2.14-2.17 charts), handed over on the 2.19 hop."""
    result = plan(linkerd_managed(HTTP, GRPC, TLS, TCP, bundle="v0.7.1"), choice="external", frm="edge-24.11.8")
    assert result.refused is None, result.refused
    assert [h.major for h in result.hops] == ["2.18", "2.19", "2.20"]
    # the installed 2.17 chart has no keep policy: turning them off on the 2.18 hop would delete them
    assert result.hops[0].crds_values == ALL_ON
    assert "stays managed by linkerd-crds on this hop" in result.hops[0].notes[-1]["text"]
    assert result.hops[1].crds_values == ALL_OFF
    handover = result.hops[1].notes[-1]["text"]
    assert "handed over" in handover
    assert "v1.1.1" in handover
    assert "adopt" in handover
    assert len(result.warnings) == 4
    assert all("no longer managed by any release" in w for w in result.warnings)
    assert HTTP in result.warnings[0]
    for fmt in ("table", "markdown", "json"):
        assert "handed over" in render(result, fmt)


def _rendered_per_hop(result: Plan, user: dict[str, Any] | None = None) -> list[set[str]]:
    """What linkerd-crds renders after each hop, its user values carrying the switches earlier hops sent (as
    the executor sends them: the release's user values with the hop's switches over them)."""
    values = dict(user or {})
    out = []
    for hop in result.hops:
        facts = FACTS[int(hop.major.split(".")[1])]
        values = switched(values, hop.crds_values, target_defaults={}).values
        out.append(renders(facts, values))
    return out


def test_a_hand_over_happens_even_after_earlier_hops_sent_per_route_switches() -> None:
    """external from 2.16: hop 2 keeps them managed (enableHttpRoutes: true lands in the user values); the 2.19
    hop must still render none of them, so it sends the per-route switches off too."""
    result = plan(linkerd_managed(HTTP, GRPC, bundle="v0.7.1"), choice="external", frm="edge-24.8.2")
    assert result.refused is None, result.refused
    assert [h.major for h in result.hops] == ["2.17", "2.18", "2.19", "2.20"]
    rendered = _rendered_per_hop(result, {"enableHttpRoutes": True})
    assert rendered[1] == {HTTP, GRPC}
    assert rendered[2] == set()
    assert rendered[3] == set()
    assert "handed over" in result.hops[2].notes[-1]["text"]


def test_auto_renders_what_the_notes_say_on_every_hop_from_2_14() -> None:
    """auto with linkerd-managed httproutes: every hop renders the CRDs it says stay managed, whatever earlier
    hops left in the user values."""
    result = plan(linkerd_managed(HTTP))
    rendered = _rendered_per_hop(result)
    assert rendered[0] == {HTTP}
    assert rendered[-1] == {HTTP, GRPC, TLS, TCP}


def test_observe_marks_a_crd_missing_from_its_releases_manifest_as_nobodys() -> None:
    """A CRD annotated for linkerd-crds but not in its manifest (left by the keep policy) has no owner."""
    notes = {"meta.helm.sh/release-name": "linkerd-crds", "meta.helm.sh/release-namespace": "linkerd"}
    listing = [
        CustomResourceDefinition(HTTP, served=("v1",), storage="v1", annotations=notes),
        CustomResourceDefinition(GRPC, served=("v1",), storage="v1", annotations=notes),
    ]
    http, grpc, _, _ = observe(listing, {"linkerd-crds": {GRPC, "servers.policy.linkerd.io"}})
    assert not http.owned_by("linkerd-crds", "linkerd")
    assert http.owner() == "no Helm release (stale linkerd-crds annotation)"
    assert grpc.owned_by("linkerd-crds", "linkerd")
    (trusted, *_) = observe(listing)
    assert trusted.owned_by("linkerd-crds", "linkerd")


def orphaned(bundle: str = "v1.2.1") -> tuple[GatewayCrd, ...]:
    return tuple(GatewayCrd(n, present=True, stale="linkerd-crds", bundle=bundle) for n in ROUTE_CRDS)


def test_auto_leaves_crds_an_earlier_hand_over_orphaned_alone() -> None:
    """Handed over at 2.19 and updated to v1.2.1 since: auto from 2.19 neither re-adopts nor downgrades them."""
    result = plan(orphaned(), frm="edge-25.10.7")
    assert result.refused is None, result.refused
    (hop,) = result.hops
    assert hop.crds_values == ALL_OFF
    assert "stale linkerd-crds annotation" in hop.notes[-1]["text"]
    assert "left untouched" in hop.notes[-1]["text"]


def test_a_bundle_downgrade_of_linkerd_managed_crds_is_refused() -> None:
    """Linkerd-managed CRDs updated to v1.2.1 by hand: a hop rendering them at v1.1.1 is refused."""
    result = plan(linkerd_managed(HTTP, GRPC, TLS, TCP, bundle="v1.2.1"), frm="edge-25.10.7")
    assert result.refused is not None
    assert result.refused.code == "gateway-api-downgrade"
    assert "v1.1.1, older than the v1.2.1" in result.refused.reason
    assert "gatewayAPI: external" in result.refused.reason


@pytest.mark.parametrize(
    ("older", "newer"), [("v0.7.1-dev", "v0.7.1"), ("v0.7.1", "v1.1.1"), ("v1.1.1", "v1.2.1"), ("v1.2.1", "v1.10.0")]
)
def test_bundle_versions_compare_as_versions(older: str, newer: str) -> None:
    """Bundle versions order numerically, a -dev pre-release before its release."""
    assert bundle_key(older) is not None
    assert bundle_key(older) < bundle_key(newer)  # type: ignore[operator]


def test_external_from_2_14_installs_grpcroutes_with_httproutes_and_hands_both_over() -> None:
    """external from 2.14: 2.16's enableHttpRoutes also renders grpcroutes while httproutes must stay managed;
    grpcroutes is installed with it and both are handed over at 2.19 (not refused)."""
    result = plan(linkerd_managed(HTTP), choice="external")
    assert result.refused is None, result.refused
    assert "grpcroutes: installed by linkerd-crds" in result.hops[1].notes[-1]["text"]
    rendered = _rendered_per_hop(result)
    assert rendered[1] == {HTTP, GRPC}
    assert rendered[4] == set()
    assert len(result.warnings) == 2


def test_a_missing_crd_next_to_foreign_ones_is_not_told_to_use_gateway_api_linkerd() -> None:
    """Only a foreign httproutes: the 2.19 refusal does not suggest gatewayAPI: linkerd (which refuses foreign CRDs)."""
    crds = tuple(
        GatewayCrd(n, present=True, release="gw", release_namespace="gw", bundle="v1.2.1")
        if n == HTTP
        else GatewayCrd(n)
        for n in ROUTE_CRDS
    )
    result = plan(crds)
    assert result.refused is not None
    assert result.refused.code == "gateway-api-missing"
    assert "gatewayAPI: linkerd" not in result.refused.reason
    assert "install them yourself" in result.refused.reason


def test_the_shipped_catalog_has_the_facts_these_tests_assume() -> None:
    """The shipped linkerd.yaml's gateway_api blocks and removed extensions are the ones the tests use."""
    shipped = default_catalog()
    for major, facts in FACTS.items():
        info = shipped.major(major)
        assert info is not None
        assert info.gateway_api == facts, major
    info = shipped.major(19)
    assert info is not None
    assert info.removed_extensions == [JAEGER]


def test_a_rollback_hop_sends_nothing_and_keeps_linkerd_crds() -> None:
    """Rolling back 2.20 -> 2.19 keeps linkerd-crds: the CRDs are neither deleted nor downgraded."""
    result = plan(linkerd_managed(HTTP, GRPC, bundle="v1.1.1"), frm="edge-26.6.3", to="edge-25.10.7")
    assert result.refused is None
    (hop,) = result.hops
    assert hop.kind == "rollback"
    assert hop.crds_values == {}
    assert any(isinstance(s, KeepRelease) and s.release == "linkerd-crds" for s in hop.steps)


def test_offline_plans_say_preflight_decides_the_gateway_api_crds() -> None:
    """Not observed (offline): no switches, and a note pointing at preflight crds.gateway-api."""
    result = plan(None)
    assert all(h.crds_values == {} for h in result.hops)
    assert any("crds.gateway-api" in n for n in result.notes)


def test_switched_values_keep_the_users_values_and_report_the_effective_ones() -> None:
    """linkerd-crds' values: its user values with the switches over them, sent with --reset-values."""
    out = switched({"enableHttpRoutes": True, "x": 1}, {"installGatewayAPI": True}, target_defaults={"y": 2})
    assert out.values == {"enableHttpRoutes": True, "x": 1, "installGatewayAPI": True}
    assert out.reset_values
    assert not out.reuse_values
    assert out.effective == {"y": 2, "enableHttpRoutes": True, "x": 1, "installGatewayAPI": True}


@pytest.mark.parametrize(
    ("extensions", "labels", "command"),
    [
        pytest.param(("linkerd-jaeger",), {}, "helm uninstall linkerd-jaeger -n linkerd", id="a helm release"),
        pytest.param(
            (), {"tracing": {"linkerd.io/extension": "jaeger"}}, "linkerd jaeger uninstall", id="a labelled namespace"
        ),
    ],
)
def test_jaeger_refuses_the_hop_into_2_19_and_no_ack_lifts_it(
    extensions: tuple[str, ...], labels: dict[str, dict[str, str]], command: str
) -> None:
    """jaeger installed + a hop into 2.19: refused with the uninstall command, even with the note acknowledged."""
    result = plan(linkerd_managed(HTTP), extensions=extensions, labels=labels, acks=frozenset({"jaeger-removed-2.19"}))
    assert result.refused is not None
    assert result.refused.code == "extension-removed"
    assert "hop 5 (" in result.refused.reason
    assert "removes the jaeger extension" in result.refused.reason
    assert command in result.refused.reason


def test_jaeger_refusal_names_the_release_and_namespace_found() -> None:
    """A jaeger release named otherwise, elsewhere: the command names that release and namespace."""
    result = plan(
        linkerd_managed(HTTP), extensions=("linkerd-jaeger",), extension_releases={"linkerd-jaeger": ("jg", "tracing")}
    )
    assert result.refused is not None
    assert "helm uninstall jg -n tracing" in result.refused.reason
    assert "tracing/jg (chart linkerd-jaeger)" in result.refused.reason


def _view(*workload_namespaces: str) -> DataPlaneView:
    return DataPlaneView(
        namespaces=(),
        workloads=tuple(Workload("Deployment", ns, "collector", 1) for ns in workload_namespaces),
        pods=(),
        budgets=(),
    )


def test_a_jaeger_namespace_left_labelled_by_helm_uninstall_is_not_refused() -> None:
    """After helm uninstall the namespace keeps its label but no workloads: the 2.19 hop is planned; while it
    still holds workloads it is refused."""
    labels = {"linkerd-jaeger": {"linkerd.io/extension": "jaeger"}}
    assert plan(linkerd_managed(HTTP), labels=labels, view=_view("shop")).refused is None
    refused = plan(linkerd_managed(HTTP), labels=labels, view=_view("linkerd-jaeger")).refused
    assert refused is not None
    assert refused.code == "extension-removed"


def test_preflight_refuses_a_hop_into_2_19_while_jaeger_is_installed() -> None:
    """A resumed run (or one where jaeger came back mid-run) is stopped by preflight extensions.removed."""
    result = plan(linkerd_managed(HTTP, GRPC, TLS, TCP, bundle="v1.1.1"), frm="edge-25.4.4")
    assert result.refused is None, result.refused
    jaeger = HelmRelease("jg", "tracing", 1, "deployed", "linkerd-jaeger", "2025.4.4")
    snap = Snapshot(installation=Installation("v1.31.2", releases=(jaeger,)))
    spec = Spec()
    (out,) = check_removed_extensions(
        Context(snap, result, CAT, spec, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), plan_offset=3)
    )
    assert out.result == "error"
    assert "hop 4 (" in out.message
    assert "helm uninstall jg -n tracing" in out.message
    none = Snapshot(installation=Installation("v1.31.2"))
    (ok,) = check_removed_extensions(Context(none, result, CAT, spec, now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
    assert ok.result == "passed"


def test_jaeger_before_2_19_still_upgrades() -> None:
    """A plan that stops at 2.18 is not refused for jaeger."""
    result = plan(linkerd_managed(HTTP), to="edge-25.4.4", extensions=("linkerd-jaeger",))
    assert result.refused is None


def test_kubernetes_plan_names_the_first_hop_that_needs_a_newer_kubernetes() -> None:
    """Kubernetes 1.30 (waived): the plan names the first hop needing 1.31 and the last it supports, in every form."""
    result = plan(linkerd_managed(HTTP), kubernetes="v1.30.4")
    assert result.refused is None
    assert result.kubernetes is not None
    assert result.kubernetes["first_unsupported_hop"] == 1  # 2.15 supports up to 1.29
    result = plan(linkerd_managed(HTTP), frm="edge-24.11.8", kubernetes="v1.30.4")
    assert result.kubernetes is not None
    # the newest 2.19 edges need 1.31 (their chart's floor), so the 2.19 hop is the first
    assert result.kubernetes["first_unsupported_hop"] == 2
    assert result.kubernetes["last_supported_hop"] == 1
    hop2 = result.hops[1]
    line = f"hop 2 ({hop2.from_} -> {hop2.to}) is the first that needs Kubernetes 1.31 or newer"
    for fmt in ("table", "markdown", "json"):
        assert line in render(result, fmt)
    assert any(line in n for n in yaml.safe_load(render(result, "yaml"))["notes"])


def test_kubernetes_refusal_names_the_hop() -> None:
    """Unwaived, the refusal names the first hop that needs a newer Kubernetes and the last one the cluster supports."""
    result = plan(linkerd_managed(HTTP), frm="edge-24.11.8", kubernetes="v1.30.4", waive=False)
    assert result.refused is not None
    assert result.refused.code == "kubernetes-unsupported"
    assert "hop 2 (" in result.refused.reason
    assert "is the first that needs Kubernetes 1.31 or newer" in result.refused.reason
    assert "the last hop Kubernetes v1.30.4 supports is hop 1 (edge-24.11.8 -> " in result.refused.reason


def test_kubernetes_too_new_for_the_first_hops_is_named_as_such_not_as_supporting_none() -> None:
    """Kubernetes 1.30 from 2.14: hops 1-2 (2.15, 2.16: at most 1.29) need an older Kubernetes, hops 3-4 are
    supported, hop 5 first needs 1.31; refused unwaived with a hint that fits (no "upgrade Kubernetes first"),
    and the refused plan still carries the Kubernetes path."""
    result = plan(linkerd_managed(HTTP), kubernetes="v1.30.4")
    assert result.kubernetes is not None
    summary = result.kubernetes["summary"]
    assert summary.startswith(
        f"hop 1 (stable-2.14.10 -> {result.hops[0].to}) supports at most Kubernetes 1.29; the cluster runs v1.30.4: "
        "hops 1-2 need an older Kubernetes than the cluster's; hop 5 ("
    ), summary
    assert "is the first that needs Kubernetes 1.31 or newer; Kubernetes v1.30.4 is supported by hops 3-4" in summary
    assert "supports none" not in summary
    assert result.kubernetes["older_kubernetes_hops"] == [1, 2]
    refused = plan(linkerd_managed(HTTP), kubernetes="v1.30.4", waive=False)
    assert refused.refused is not None
    assert refused.refused.code == "kubernetes-unsupported"
    assert "upgrade Kubernetes first" not in refused.refused.reason
    assert f"newer than {result.hops[0].to} supports and cannot be downgraded" in refused.refused.reason
    assert refused.kubernetes is not None
    assert refused.kubernetes["first_unsupported_hop"] == 1
    too_old = plan(linkerd_managed(HTTP), frm="edge-24.11.8", kubernetes="v1.30.4", waive=False)
    assert too_old.refused is not None
    assert "upgrade Kubernetes first" in too_old.refused.reason
    assert too_old.kubernetes is not None
    assert too_old.kubernetes["first_unsupported_hop"] == 2


def test_values_migrations_apply_per_hop_from_2_14_to_2_20() -> None:
    """Each hop's plan lists the catalog's values changes of its major (2.16, 2.19, 2.20 have some)."""
    result = plan(linkerd_managed(HTTP))
    changes = {h.major: h.values_changes for h in result.hops}
    assert changes["2.16"].get("removed") == ["proxyInit.resources"]
    assert "controlPlaneTracing" in changes["2.19"].get("renamed", {})
    assert changes["2.20"].get("removed") == ["proxyInit.image"]
    assert json.loads(render(result, "json"))["hops"][5]["crds_values"] == ALL_ON


def test_status_lists_every_hops_values_diff_in_hop_order() -> None:
    """status shows each hop's diff (hop numbers from 1), not only the last one."""
    lines = values_lines(
        {
            "1/linkerd-control-plane": [{"key": "a", "old": 1, "new": 2}],
            "0/linkerd-control-plane": [{"key": "b", "old": None, "new": "<redacted>"}],
            "0/linkerd-crds": [],
        }
    )
    assert lines[0] == "values of hop 1 linkerd-control-plane: 1 change(s)"
    assert lines[2] == "values of hop 1 linkerd-crds: 0 change(s)"
    assert lines[3:] == ["values of hop 2 linkerd-control-plane: 1 change(s)", "  a: 1 -> 2"]


def test_status_header_counts_the_values_changes_of_every_hop_not_only_the_last() -> None:
    """The header above the per-hop lines totals every hop's changes (not ``N (last hop)``)."""
    diffs = {
        "0/linkerd-control-plane": [{"key": "a"}, {"key": "b"}],
        "0/linkerd-crds": [{"key": "installGatewayAPI"}],
        "1/linkerd-control-plane": [{"key": "c"}],
    }
    assert values_header(diffs, last=1) == "values changes: 4 over 2 hop(s) (hop 1: 3, hop 2: 1)"
    assert values_header({}, last=3) == "values changes: 3 (last hop; this checkpoint kept no per-hop diffs)"


def _proxy_pod(version: str, *, native: bool) -> Pod:
    proxy = Container("linkerd-proxy", f"cr.l5d.io/linkerd/proxy:{version}", "Always" if native else None)
    init = (Container("linkerd-init", "cr.l5d.io/linkerd/proxy-init:v2.4.1"),)
    return Pod(
        "shop",
        "web-abc-1",
        labels={"pod-template-hash": "abc", "linkerd.io/control-plane-ns": "linkerd"},
        annotations={"upgrader.io/restarted-by": "run-1/5"},
        containers=(Container("app", "app:1"), *(() if native else (proxy,))),
        init_containers=(*init, proxy) if native else init,
        owner_kind="ReplicaSet",
        owner_name="web-abc",
        phase="Running",
        ready=True,
    )


@pytest.mark.parametrize(
    ("version", "native"),
    [
        pytest.param("edge-26.6.3", True, id="after the 2.20 hop the proxy is a native sidecar init container"),
        pytest.param("edge-25.10.7", False, id="after a rollback to 2.19 the proxy is a regular container again"),
    ],
)
def test_both_proxy_shapes_are_judged_by_discovery_and_the_health_gate(version: str, native: bool) -> None:
    """Discovery reads the proxy's version in either shape; the gate passes it at that version, fails it at another."""
    pod = _proxy_pod(version, native=native)
    assert proxy_version(pod) == version
    assert meshed(pod)
    web = Workload("Deployment", "shop", "web", 1, pod_labels={"app": "web"}, ready=1, available=1, updated=1, total=1)
    assert assess(web, [pod], marker="run-1/5", version=version, elapsed=1, timeout=60).state == "passed"
    other = "edge-25.10.7" if native else "edge-26.6.3"
    assert assess(web, [pod], marker="run-1/5", version=other, elapsed=1, timeout=60).state != "passed"


def test_an_init_container_named_linkerd_proxy_without_restart_policy_always_is_not_the_proxy() -> None:
    """Only restartPolicy: Always makes an init container the (native sidecar) proxy."""
    pod = _proxy_pod("edge-26.6.3", native=True)
    plain = replace(pod, init_containers=tuple(replace(c, restart_policy=None) for c in pod.init_containers))
    assert proxy_version(plain) is None


def test_apply_plan_refuses_a_reviewed_plan_whose_gateway_api_decision_changed(tmp_path: Path) -> None:
    """apply --plan: the same hops but another Gateway API choice or other switches is refused (plan again)."""
    reviewed = plan(linkerd_managed(HTTP))
    saved = json.loads(json.dumps(reviewed.as_json()))
    check_plan_file(saved, reviewed, tmp_path / "plan.json")  # unchanged: accepted
    external = plan(linkerd_managed(HTTP), choice="external")
    with pytest.raises(InputError, match="decided the Gateway API CRDs differently"):
        check_plan_file(saved, external, tmp_path / "plan.json")
    other = plan(foreign())
    with pytest.raises(InputError, match="against the cluster and spec now: gatewayAPI: auto"):
        check_plan_file(saved, other, tmp_path / "plan.json")


def _served(crds: tuple[GatewayCrd, ...], versions: dict[str, tuple[str, ...]]) -> tuple[GatewayCrd, ...]:
    return tuple(replace(c, served=versions.get(c.name, c.served)) for c in crds)


def test_foreign_crds_that_do_not_serve_what_the_next_major_reads_refuse_the_hop() -> None:
    """2.17 -> 2.18 reads HTTPRoute and GRPCRoute at v1: foreign CRDs serving only v1beta1/v1alpha2 are refused,
    naming each CRD, what it serves and what the hop needs."""
    old = _served(foreign(), {HTTP: ("v1beta1",), GRPC: ("v1alpha2",), TLS: ("v1alpha2",), TCP: ("v1alpha2",)})
    result = plan(old, frm="edge-24.11.8", to="edge-25.4.4")
    assert result.refused is not None
    assert result.refused.code == "gateway-api-versions"
    reason = result.refused.reason
    assert "hop 1 (edge-24.11.8 -> edge-25.4.4)" in reason
    assert f"{HTTP} (Helm release gateway-system/gateway-api, bundle v1.2.1) serves v1beta1; 2.18 needs v1" in reason
    assert f"{GRPC} (Helm release gateway-system/gateway-api, bundle v1.2.1) serves v1alpha2; 2.18 needs v1" in reason
    assert TLS not in reason, "TLSRoute/TCPRoute versions are not required"
    both = _served(foreign(), {HTTP: ("v1beta1", "v1"), GRPC: ("v1alpha2", "v1")})
    assert plan(both, frm="edge-24.11.8", to="edge-25.4.4").refused is None


def test_linkerd_managed_crds_are_not_judged_by_their_old_served_versions() -> None:
    """CRDs linkerd-crds renders on the hop carry its chart's versions: their observed ones do not matter."""
    old = _served(linkerd_managed(HTTP, GRPC, bundle="v0.7.1"), {HTTP: ("v1beta1",), GRPC: ("v1alpha2",)})
    assert plan(old, frm="edge-24.11.8", to="edge-25.4.4").refused is None


def test_rolling_back_into_a_major_that_reads_older_versions_checks_foreign_crds_too() -> None:
    """2.18 -> 2.17 reads GRPCRoute v1alpha2: a foreign GRPCRoute CRD serving only v1 is refused."""
    newer = _served(foreign(), {HTTP: ("v1beta1", "v1"), GRPC: ("v1",)})
    result = plan(newer, frm="edge-25.4.4", to="edge-24.11.8")
    assert result.refused is not None
    assert result.refused.code == "gateway-api-versions"
    assert f"{GRPC} (Helm release gateway-system/gateway-api, bundle v1.2.1) serves v1; 2.17 needs v1alpha2" in (
        result.refused.reason
    )


def test_a_crds_rollback_never_downgrades_or_deletes_the_gateway_api_crds() -> None:
    """--include-crds: the target chart rendering a live CRD at an older bundle is a downgrade; one without the
    keep policy that the target stops rendering would be deleted; a foreign one rendered would be taken back."""

    def refusal(crds: tuple[GatewayCrd, ...], major: int, values: dict[str, Any] | None = None) -> str | None:
        return crd_rollback_refusal(
            crds, FACTS[major], values or {}, release="linkerd-crds", namespace="linkerd", target="1.8.0"
        )

    newer = linkerd_managed(HTTP, GRPC, bundle="v1.1.1")
    reason = refusal(newer, 17)
    assert reason is not None
    assert f"downgrade {HTTP} from bundle v1.1.1 to v0.7.1" in reason
    assert refusal(newer, 18) is None, "same bundle: nothing to refuse"
    unkept = tuple(replace(c, policy=None) for c in linkerd_managed(HTTP, bundle="v0.7.1"))
    reason = refusal(unkept, 17, {"enableHttpRoutes": False})
    assert reason == (
        f"rolling linkerd-crds back to 1.8.0 would delete {HTTP} (no helm.sh/resource-policy: keep), and every "
        "route it holds"
    )
    reason = refusal(foreign(), 19, {"installGatewayAPI": True})
    assert reason is not None
    assert f"take back {HTTP} (Helm release gateway-system/gateway-api, bundle v1.2.1)" in reason
    assert refusal(foreign(), 19) is None, "2.19 renders none by default"


def test_preflight_refuses_foreign_crds_that_do_not_serve_what_the_hop_reads() -> None:
    """crds.gateway-api judges an offline plan against the live CRDs: it names the CRD, its versions and the need."""
    offline = plan(None, frm="edge-24.11.8", to="edge-25.4.4")
    assert offline.refused is None
    notes = {"meta.helm.sh/release-name": "gateway-api", "meta.helm.sh/release-namespace": "gateway-system"}
    live = [
        CustomResourceDefinition(HTTP, served=("v1beta1",), storage="v1beta1", annotations=notes),
        CustomResourceDefinition(GRPC, served=("v1alpha2", "v1"), storage="v1", annotations=notes),
    ]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    (out,) = check_gateway_api(Context(Snapshot(crds=live), offline, CAT, Spec(), now=now))
    assert out.result == "error", out
    assert f"{HTTP} (Helm release gateway-system/gateway-api, bundle unknown) serves v1beta1; 2.18 needs v1" in (
        out.message
    )
    assert GRPC not in out.message.split("(now:")[0], "GRPCRoute serves v1: not named"
    live[0] = replace(live[0], served=("v1beta1", "v1"))
    (other,) = check_gateway_api(Context(Snapshot(crds=live), offline, CAT, Spec(), now=now))
    assert "needs v1" not in other.message, "serving v1 too passes the versions check (an offline plan: plan again)"
