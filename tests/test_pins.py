"""Version pins: found in values and workloads, refused or reported, never waited for and never 'passed'."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fakes import MemoryStore
from tests.test_execution import CAT, NOW, FakeCluster, _executor
from upgrader.dataplane import assess, digest_of
from upgrader.execution import RunStoppedError
from upgrader.pins import (
    DIGEST,
    NAMESPACE_ANNOTATION,
    PROXY_VERSION,
    TEMPLATE_ANNOTATION,
    VALUES,
    Pin,
    proxy_pin,
    value_pins,
    workload_pins,
)
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.ports import Container, DataPlaneView, Namespace, Pod, Workload
from upgrader.preflight.checks import Context, Snapshot, check_pins
from upgrader.spec import Spec
from upgrader.states import RunState

DIGEST_IMAGE = "cr.l5d.io/linkerd/proxy@sha256:0123abcd"


def _workload(name: str = "web", ns: str = "shop", **annotations: str) -> Workload:
    return Workload("Deployment", ns, name, 1, 1, 1, 1, 1, 1, pod_labels={"app": name}, pod_annotations=annotations)


def _pod(name: str = "web", ns: str = "shop", image: str = "cr.l5d.io/linkerd/proxy:stable-2.12.6") -> Pod:
    return Pod(
        ns,
        f"{name}-h-1",
        labels={"linkerd.io/control-plane-ns": "linkerd", "pod-template-hash": "h"},
        containers=(Container("app", "app:1"), Container("linkerd-proxy", image)),
        owner_kind="ReplicaSet",
        owner_name=f"{name}-h",
        phase="Running",
        ready=True,
    )


# ---- values ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "overrides", "targets", "expected"),
    [
        pytest.param({}, {}, ["stable-2.14.10"], [], id="no image version set is no pin"),
        pytest.param(
            {"proxy": {"image": {"version": "stable-2.13.7"}}},
            {},
            ["stable-2.14.10"],
            [("proxy.image.version", "stable-2.13.7")],
            id="a proxy version in the values is a pin",
        ),
        pytest.param(
            {"proxy": {"image": {"version": "stable-2.14.10"}}},
            {},
            ["stable-2.14.10"],
            [],
            id="a proxy version equal to the only target is no pin",
        ),
        pytest.param(
            {"proxy": {"image": {"version": "stable-2.14.10"}}},
            {},
            ["stable-2.13.7", "stable-2.14.10"],
            [("proxy.image.version", "stable-2.14.10")],
            id="a version equal to the last target still pins the hop before it",
        ),
        pytest.param(
            {"proxy": {"image": {"version": "stable-2.13.7"}}},
            {"proxy": {"image": {"version": ""}}},
            ["stable-2.14.10"],
            [],
            id="the spec's overrides can unset the pin",
        ),
        pytest.param(
            {"controllerImageVersion": "sha256:feed", "policyController": {"image": {"version": "stable-2.13.7"}}},
            {},
            ["stable-2.14.10"],
            [("controllerImageVersion", "sha256:feed"), ("policyController.image.version", "stable-2.13.7")],
            id="controller and policy controller image versions are pins",
        ),
        pytest.param(
            {"proxyInit": {"image": {"version": "v2.2.3"}}, "debugContainer": {"image": {"version": "x"}}},
            {},
            ["stable-2.14.10"],
            [("debugContainer.image.version", "x")],
            id="proxy-init's version (the chart pins it itself) is not a pin",
        ),
    ],
)
def test_value_pins(
    values: dict[str, Any], overrides: dict[str, Any], targets: list[str], expected: list[tuple[str, str]]
) -> None:
    """Image versions in the user values (after the spec's overrides) that differ from a hop's target."""
    pins = value_pins(values, overrides, release="linkerd-control-plane", namespace="linkerd", targets=targets)
    assert [(p.source, p.version) for p in pins] == expected
    assert all(p.kind == VALUES and p.name == "linkerd-control-plane" for p in pins)


# ---- workloads ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("workload", "namespace", "pods", "values_version", "expected"),
    [
        pytest.param(_workload(), Namespace("shop"), [_pod()], None, None, id="nothing pins an ordinary workload"),
        pytest.param(
            _workload(**{PROXY_VERSION: "stable-2.13.7"}),
            Namespace("shop", annotations={PROXY_VERSION: "stable-2.12.6"}),
            [_pod()],
            "stable-2.11.5",
            (TEMPLATE_ANNOTATION, "stable-2.13.7"),
            id="the pod template's annotation wins over the namespace's and the values'",
        ),
        pytest.param(
            _workload(),
            Namespace("shop", annotations={PROXY_VERSION: "stable-2.12.6"}),
            [_pod()],
            "stable-2.11.5",
            (NAMESPACE_ANNOTATION, "stable-2.12.6"),
            id="the namespace's annotation wins over the values",
        ),
        pytest.param(
            _workload(),
            Namespace("shop"),
            [_pod()],
            "stable-2.11.5",
            ("values proxy.image.version", "stable-2.11.5"),
            id="the values' proxy version pins every injected proxy",
        ),
        pytest.param(
            _workload(**{PROXY_VERSION: "stable-2.13.7"}),
            Namespace("shop"),
            [_pod(image=DIGEST_IMAGE)],
            None,
            (DIGEST, "sha256:0123abcd"),
            id="a digest in the pods wins over everything: the injector never replaces it",
        ),
        pytest.param(
            _workload(),
            Namespace("shop"),
            [_pod(name="other", image=DIGEST_IMAGE)],
            None,
            None,
            id="another workload's digest-pinned pod does not pin this one",
        ),
    ],
)
def test_proxy_pin(
    workload: Workload,
    namespace: Namespace,
    pods: list[Pod],
    values_version: str | None,
    expected: tuple[str, str] | None,
) -> None:
    """What fixes a workload's proxy, in the injector's order (after a digest)."""
    pin = proxy_pin(workload, namespace, pods, values_version=values_version)
    assert (None if pin is None else (pin.source, pin.version)) == expected


def test_workload_pins_leave_out_an_annotation_equal_to_every_target_but_never_a_digest() -> None:
    """An annotation naming the target moves with the upgrade; a digest is never verifiable."""
    same = _workload("same", **{PROXY_VERSION: "stable-2.14.10"})
    old = _workload("old", **{PROXY_VERSION: "stable-2.13.7"})
    dig = _workload("dig")
    pods = [
        _pod("same"),
        _pod("old"),
        _pod("dig", image=f"cr.l5d.io/linkerd/proxy:stable-2.14.10@{DIGEST_IMAGE[-15:]}"),
    ]
    pins = workload_pins([same, old, dig], [Namespace("shop")], pods, targets=["stable-2.14.10"])
    assert [(p.name, p.source) for p in pins] == [("old", TEMPLATE_ANNOTATION), ("dig", DIGEST)]


def test_a_digest_pinned_pod_fails_its_gate_at_once_never_passes() -> None:
    """assess: a proxy whose version cannot be read is no longer accepted as 'at the version'."""
    verdict = assess(
        _workload(), [_pod(image=DIGEST_IMAGE)], marker=None, version="stable-2.14.10", elapsed=0, timeout=600
    )
    assert verdict.state == "failed"
    assert "digest" in verdict.reason
    tagged = assess(_workload(), [_pod(image="cr.l5d.io/linkerd/proxy:stable-2.14.10")], marker=None,
                    version="stable-2.14.10", elapsed=0, timeout=600)  # fmt: skip
    assert tagged.state == "passed"


def _sidecar_pod(image: str, restart_policy: str | None) -> Pod:
    """A pod whose proxy is an init container (a native sidecar when ``restart_policy`` is Always)."""
    return replace(
        _pod(),
        containers=(Container("app", "app:1"),),
        init_containers=(Container("linkerd-proxy", image, restart_policy),),
    )


@pytest.mark.parametrize(
    ("pod", "digest"),
    [
        pytest.param(_pod(image=DIGEST_IMAGE), "sha256:0123abcd", id="a proxy container pinned by digest"),
        pytest.param(_pod(), None, id="a tagged proxy has no digest"),
        pytest.param(_sidecar_pod(DIGEST_IMAGE, "Always"), "sha256:0123abcd", id="a native-sidecar proxy by digest"),
        pytest.param(_sidecar_pod(DIGEST_IMAGE, None), None, id="an init container that is not a sidecar is no proxy"),
    ],
)
def test_one_digest_rule_for_the_plan_and_the_gate(pod: Pod, digest: str | None) -> None:
    """The planner (workload pins) and the gate (assess) judge a digest-pinned proxy by the same rule."""
    assert digest_of(pod) == digest
    pinned = workload_pins([_workload()], [Namespace("shop")], [pod], targets=["stable-2.14.10"])
    verdict = assess(_workload(), [pod], marker=None, version="stable-2.14.10", elapsed=0, timeout=600)
    assert (DIGEST in [p.source for p in pinned]) is (digest is not None)
    assert ("digest" in verdict.reason) is (digest is not None)


# ---- planning ----------------------------------------------------------------------------------
def _observed(*workloads: Workload, pods: list[Pod] | None = None, values: dict[str, Any] | None = None) -> Observed:
    view = DataPlaneView(
        (Namespace("shop"),), workloads, tuple(pods if pods is not None else [_pod(w.name) for w in workloads]), ()
    )
    return Observed(
        CAT.parse("stable-2.12.6"),
        {"shop": {"stable-2.12.6": len(workloads)}},
        "v1.26.0",
        release_namespaces={"linkerd-control-plane": "linkerd"},
        control_plane_values=values or {},
        data_plane_view=view,
    )


def _plan(observed: Observed, spec: Spec, target: str = "stable-2.13.7") -> Plan:
    offering, _ = build_offering(CAT, None)
    return make_plan(observed, CAT.parse(target), offering, CAT, spec)


def test_a_plan_is_refused_by_default_naming_every_pin_and_how_to_remove_it() -> None:
    """pins: refuse (the default): no hops, code pinned-versions, each pin and its remedy in the reason."""
    observed = _observed(
        _workload("web", **{PROXY_VERSION: "stable-2.12.6"}),
        _workload("dig"),
        pods=[_pod("web"), _pod("dig", image=DIGEST_IMAGE)],
        values={"controllerImageVersion": "stable-2.12.6"},
    )
    plan = _plan(observed, Spec())
    assert plan.refused is not None
    assert plan.refused.code == "pinned-versions"
    assert plan.hops == []
    reason = plan.refused.reason
    for text in ("Deployment shop/web", "Deployment shop/dig", "controllerImageVersion", "remove the", "pins: report"):
        assert text in reason
    assert [(p["kind"], p["name"], p["source"]) for p in plan.as_json()["pins"]] == [
        ("values", "linkerd-control-plane", "controllerImageVersion"),
        ("Deployment", "dig", DIGEST),
        ("Deployment", "web", TEMPLATE_ANNOTATION),
    ]


def test_with_pins_report_the_plan_goes_ahead_and_lists_the_pins() -> None:
    """pins: report: the same cluster plans its hops, and -o json lists each pin with its version."""
    observed = _observed(_workload("web", **{PROXY_VERSION: "stable-2.12.6"}), _workload("free"))
    plan = _plan(observed, Spec(pins="report"))
    assert plan.refused is None
    assert plan.hops
    assert plan.as_json()["pins"] == [
        {
            "kind": "Deployment",
            "namespace": "shop",
            "name": "web",
            "source": TEMPLATE_ANNOTATION,
            "version": "stable-2.12.6",
        }
    ]
    assert Plan.from_json(plan.as_json()).pins == plan.pins


def test_a_plan_takes_the_data_planes_inventory_once_for_its_pins_and_its_workload_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One pass over the data plane's pods per plan (at 10,000 pods each pass costs a tenth of a second):
    the pins and the restart counts per wave both come from it, as they did from two passes."""
    from upgrader import planning  # noqa: PLC0415 - the module whose inventory calls are counted

    calls: list[frozenset[str]] = []
    real = planning.inventory

    def counted(view: DataPlaneView, scope: Any, **kwargs: Any) -> Any:
        calls.append(frozenset(scope))
        return real(view, scope, **kwargs)

    monkeypatch.setattr(planning, "inventory", counted)
    observed = _observed(_workload("web", **{PROXY_VERSION: "stable-2.12.6"}), _workload("free"))
    plan = _plan(observed, Spec(pins="report"))
    assert calls == [frozenset({"shop"})]
    assert [(p.name, p.version) for p in plan.pins] == [("web", "stable-2.12.6")]
    assert [w.workloads for h in plan.hops for w in h.waves if "shop" in w.namespaces] == [{"shop": 2}]


def test_a_workload_excluded_from_the_waves_is_not_a_pin() -> None:
    """Only workloads the plan would restart are judged."""
    observed = _observed(_workload("web", **{PROXY_VERSION: "stable-2.12.6"}))
    spec = Spec.model_validate({"dataPlane": {"excludeNamespaces": ["shop"]}})
    assert _plan(observed, spec).pins == []


# ---- preflight ---------------------------------------------------------------------------------
def _context(spec: Spec, *, values: dict[str, Any], workloads: list[Workload], pods: list[Pod]) -> Context:
    plan = _plan(_observed(*workloads, pods=pods), Spec(pins="report"))
    snapshot = Snapshot(namespaces=[Namespace("shop")], workloads=workloads, meshed_pods=pods, user_values=values)
    return Context(snapshot, plan, CAT, spec, now=NOW)


@pytest.mark.parametrize(("policy", "severity"), [("refuse", "error"), ("report", "warning")])
def test_preflight_names_each_pin_with_the_policy_as_its_severity(policy: str, severity: str) -> None:
    """values.pins and data-plane.pins: an error when the policy refuses, a warning when it reports."""
    spec = Spec.model_validate({"pins": policy})
    ctx = _context(
        spec,
        values={"proxy": {"image": {"version": "stable-2.12.6"}}},
        workloads=[_workload("web", **{PROXY_VERSION: "stable-2.12.6"})],
        pods=[_pod("web")],
    )
    results = {r.id: r for r in check_pins(ctx)}
    assert results["values.pins"].result == severity
    assert "proxy.image.version = stable-2.12.6" in results["values.pins"].message
    assert results["data-plane.pins"].result == severity
    assert "Deployment shop/web" in results["data-plane.pins"].message
    assert "remove the config.linkerd.io/proxy-version annotation" in (results["data-plane.pins"].hint or "")


def test_preflight_passes_without_pins_and_cannot_check_unread_values() -> None:
    """No pin: both pass; values that could not be read: 'cannot check', not a pass."""
    ctx = _context(Spec(), values={}, workloads=[_workload("web")], pods=[_pod("web")])
    assert [r.result for r in check_pins(ctx)] == ["passed", "passed"]
    blind = replace(ctx, snapshot=replace(ctx.snapshot, errors={"values": "forbidden"}))
    first = check_pins(blind)[0]
    assert first.result == "error"
    assert "cannot check" in first.message


# ---- execution ---------------------------------------------------------------------------------
@dataclass
class PinningCluster(FakeCluster):
    """The fake cluster, with workloads whose restarted pods keep the proxy their pin names."""

    held: dict[str, str] = field(default_factory=dict)  # "ns/name" -> proxy version (or @digest) it keeps
    cp_proxy: str | None = None  # the control-plane pods' proxy (a values pin)

    def wait_for_change(self, since: int, timeout: float) -> int:
        changes = super().wait_for_change(since, timeout)
        self.pod_versions.update(self.held)
        return changes

    def data_plane(self) -> DataPlaneView:
        view = super().data_plane()
        pods = tuple(
            replace(p, containers=(Container("linkerd-proxy", DIGEST_IMAGE),))
            if self.held.get(f"{p.namespace}/{p.name.rsplit('-', 1)[0]}") == "@digest"
            else p
            for p in view.pods
        )
        return replace(view, pods=pods)

    def control_plane_pods(self, namespace: str) -> list[Pod]:
        pods = super().control_plane_pods(namespace)
        proxy = f"cr.l5d.io/linkerd/proxy:{self.cp_proxy}"
        return [replace(p, containers=(Container("linkerd-proxy", proxy),)) for p in pods] if self.cp_proxy else pods


def _cluster_with_pins() -> PinningCluster:
    cluster = PinningCluster()
    cluster.add("Deployment", "shop", "pinned", pod_annotations={PROXY_VERSION: "stable-2.12.6"})
    cluster.add("Deployment", "shop", "dig")
    cluster.held = {"shop/pinned": "stable-2.12.6", "shop/dig": "@digest"}
    return cluster


def _exec_plan(cluster: FakeCluster, spec: Spec, values: dict[str, Any] | None = None) -> Plan:
    view = cluster.data_plane()
    observed = Observed(
        CAT.parse("stable-2.12.6"),
        {"shop": {"stable-2.12.6": 3}},
        "v1.26.0",
        release_namespaces={"linkerd-control-plane": "linkerd"},
        control_plane_values=values or {},
        data_plane_view=view,
    )
    return _plan(observed, spec)


def test_pinned_workloads_are_reported_at_once_and_the_run_ends_done() -> None:
    """pins: report: the pinned and the digest-pinned workload are not restarted, logged workload-pinned,
    recorded in the checkpoint; the rest is upgraded; no gate waits for a version that never comes."""
    spec = Spec.model_validate({"waivers": ["kubernetes-version"], "pins": "report"})
    cluster = _cluster_with_pins()
    plan = _exec_plan(cluster, spec)
    assert {p.name for p in plan.pins} == {"pinned", "dig"}
    with capture_logs() as logs:
        result = _executor(cluster, plan, MemoryStore(), spec=spec).run()
    assert result.state == RunState.DONE
    assert [a for a in cluster.actions if a.startswith("restart")] == ["restart shop/web"]
    pinned = sorted(e["workload"] for e in logs if e["event"] == "workload-pinned")
    assert pinned == ["Deployment shop/dig", "Deployment shop/pinned"]
    assert not any(e["event"] == "workload-passed" and "dig" in e["workload"] for e in logs)
    assert len(result.pinned) == 2
    assert any("sha256:0123abcd" in p for p in result.pinned)
    assert (cluster.now - NOW) < dt.timedelta(seconds=60), "nothing waited for the rollout timeout"


def test_a_pin_that_appears_after_planning_stops_the_wave_under_refuse() -> None:
    """pins: refuse and a pin found at the wave: the run stops naming it, before restarting anything."""
    spec = Spec.model_validate({"waivers": ["kubernetes-version"]})
    cluster = PinningCluster()
    plan = _exec_plan(cluster, spec)
    assert plan.refused is None
    cluster.workload_list = [
        replace(w, pod_annotations={PROXY_VERSION: "stable-2.12.6"}) for w in cluster.workload_list
    ]
    with pytest.raises(RunStoppedError, match=re.escape("versions are pinned: Deployment shop/web")):
        _executor(cluster, plan, MemoryStore(), spec=spec).run()
    assert not [a for a in cluster.actions if a.startswith("restart")]


def test_a_values_proxy_pin_is_what_the_control_plane_gate_expects_under_report() -> None:
    """pins: report with proxy.image.version pinned: the control plane's proxies are judged against the pin,
    and every workload (injected from those values) is reported pinned, not restarted."""
    spec = Spec.model_validate({"waivers": ["kubernetes-version"], "pins": "report"})
    cluster = PinningCluster(cp_proxy="stable-2.12.6")
    plan = _exec_plan(cluster, spec, values={"proxy": {"image": {"version": "stable-2.12.6"}}})
    assert [(p.kind, p.source) for p in plan.pins] == [(VALUES, "proxy.image.version")]
    result = _executor(cluster, plan, MemoryStore(), spec=spec).run()
    assert result.state == RunState.DONE
    assert not [a for a in cluster.actions if a.startswith("restart")]
    assert result.pinned == [
        "Deployment shop/web: values proxy.image.version = stable-2.12.6 "
        "(hop stable-2.13.7: not restarted, not upgraded)"
    ]


def test_without_a_values_pin_stale_control_plane_proxies_still_fail_the_gate() -> None:
    """The gate's expectation moves only with a values pin in the plan."""
    spec = Spec.model_validate({"waivers": ["kubernetes-version"], "pins": "report"})
    cluster = PinningCluster(cp_proxy="stable-2.12.6")
    with pytest.raises(RunStoppedError, match=re.escape("control-plane pods not on stable-2.13.7")):
        _executor(cluster, _exec_plan(cluster, spec), MemoryStore(), spec=spec).run()


def test_pin_text_names_the_object_source_and_version() -> None:
    """How a pin reads in plans, preflight and status."""
    pin = Pin(kind="Deployment", namespace="shop", name="web", source=TEMPLATE_ANNOTATION, version="stable-2.13.7")
    assert str(pin) == f"Deployment shop/web: {TEMPLATE_ANNOTATION} = stable-2.13.7"
    values = Pin(
        kind=VALUES, namespace="linkerd", name="linkerd-control-plane", source="proxy.image.version", version="x"
    )
    assert str(values).startswith("release linkerd/linkerd-control-plane: proxy.image.version")
