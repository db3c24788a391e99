"""The pure data-plane decisions: inventory, budgets, throttle, health gate."""

from __future__ import annotations

import pytest

from upgrader.dataplane import (
    Throttle,
    assess,
    blocking_budgets,
    budget_block,
    budget_hint,
    down_at_once,
    inventory,
    next_starts,
    owner_of,
    pods_by_namespace,
)
from upgrader.ports import Budget, Container, DataPlaneView, Namespace, Pod, Workload

PROXY = "cr.l5d.io/linkerd/proxy"
MARK = "run-1/0"


def _w(kind: str, ns: str, name: str, replicas: int = 2, **kw: object) -> Workload:
    fields: dict[str, object] = {"ready": replicas, "available": replicas, "updated": replicas, "total": replicas}
    fields.update(kw)
    return Workload(kind, ns, name, replicas, pod_labels={"app": name}, **fields)  # type: ignore[arg-type]


def _pod(
    ns: str,
    name: str,
    owner: tuple[str, str] | None,
    *,
    version: str | None = "stable-2.14.10",
    sidecar: bool = False,
    **kw: object,
) -> Pod:
    proxy = (Container("linkerd-proxy", f"{PROXY}:{version}", "Always" if sidecar else None),) if version else ()
    labels = {"pod-template-hash": "abc"} if owner and owner[0] == "ReplicaSet" else {}
    fields: dict[str, object] = {"phase": "Running", "ready": True, "annotations": {"upgrader.io/restarted-by": MARK}}
    fields.update(kw)
    return Pod(
        ns,
        name,
        labels=labels,
        containers=(Container("app", "app:1"), *(() if sidecar else proxy)),
        init_containers=proxy if sidecar else (),
        owner_kind=owner[0] if owner else "",
        owner_name=owner[1] if owner else "",
        **fields,  # type: ignore[arg-type]
    )


def test_owner_of_maps_replica_set_pods_to_their_deployment() -> None:
    assert owner_of(_pod("shop", "web-abc-1", ("ReplicaSet", "web-abc"))) == ("Deployment", "web")
    assert owner_of(_pod("shop", "db-0", ("StatefulSet", "db"))) == ("StatefulSet", "db")
    assert owner_of(_pod("shop", "solo", None)) is None


def _view(*, pods: list[Pod], workloads: list[Workload], namespaces: list[Namespace] | None = None) -> DataPlaneView:
    spaces = namespaces or [
        Namespace(n, annotations={"linkerd.io/inject": "enabled"}) for n in sorted({p.namespace for p in pods})
    ]
    return DataPlaneView(tuple(spaces), tuple(workloads), tuple(pods), ())


def test_inventory_finds_meshed_workloads_and_reports_the_rest() -> None:
    """Deployments (via ReplicaSets), StatefulSets, native sidecars; bare pods, Jobs, opt-outs, skips, OnDelete."""
    view = _view(
        workloads=[
            _w("Deployment", "shop", "web"),
            _w("StatefulSet", "shop", "db"),
            _w("Deployment", "shop", "admin"),
            _w("Deployment", "shop", "cache", annotations={"upgrader.io/skip": "true"}),
            _w("DaemonSet", "shop", "agent", strategy="OnDelete"),
            _w("Deployment", "shop", "sidecar"),
        ],
        pods=[
            _pod("shop", "web-abc-1", ("ReplicaSet", "web-abc"), version="stable-2.13.7"),
            _pod("shop", "db-0", ("StatefulSet", "db")),
            _pod(
                "shop",
                "admin-abc-1",
                ("ReplicaSet", "admin-abc"),
                version=None,
                annotations={"linkerd.io/inject": "disabled"},
            ),
            _pod("shop", "cache-abc-1", ("ReplicaSet", "cache-abc")),
            _pod("shop", "agent-x", ("DaemonSet", "agent")),
            _pod("shop", "sidecar-abc-1", ("ReplicaSet", "sidecar-abc"), sidecar=True),
            _pod("shop", "debug", None),
            _pod("shop", "report-1-x", ("Job", "report-1")),
            _pod("shop", "late-abc-1", ("ReplicaSet", "late-abc"), version=None),
            _pod("shop", "done-abc-1", ("ReplicaSet", "web-abc"), phase="Succeeded"),
        ],
    )
    inv = inventory(view, ["shop"])
    assert [w.name for w in inv.targets] == ["sidecar", "web", "db"]
    reasons = {f"{r.kind}/{r.name}": r.reason for r in inv.reported}
    assert "annotated upgrader.io/skip" in reasons["Deployment/cache"]
    assert "OnDelete" in reasons["DaemonSet/agent"]
    assert "bare pod" in reasons["Pod/debug"]
    assert "Job pod" in reasons["Job/report-1"]
    assert "1 pod(s) unmeshed" in reasons["Namespace/shop"], "late is unmeshed; admin opted out on purpose"
    assert "Deployment/admin" not in reasons
    assert inv.proxies[("Deployment", "shop", "web")] == {"stable-2.13.7": 1}


def test_inventory_honours_scope_exclusions_selectors_and_the_namespace_skip() -> None:
    pods = [_pod(ns, "web-abc-1", ("ReplicaSet", "web-abc")) for ns in ("a", "b", "c", "d", "e")]
    workloads = [_w("Deployment", ns, "web") for ns in ("a", "b", "c", "d", "e")]
    spaces = [
        Namespace("a", {"tier": "web"}),
        Namespace("b", {"tier": "web", "frozen": "yes"}),
        Namespace("c", {"tier": "batch"}),
        Namespace("d", {"tier": "web"}, {"upgrader.io/skip": "true"}),
        Namespace("e", {"tier": "web"}),
    ]
    view = _view(pods=pods, workloads=workloads, namespaces=spaces)
    inv = inventory(
        view,
        ["a", "b", "c", "d"],
        exclude_namespaces=["e"],
        include_selector={"tier": "web"},
        exclude_selector={"frozen": "yes"},
    )
    assert [w.namespace for w in inv.targets] == ["a"]
    assert {r.namespace: r.reason for r in inv.reported} == {
        "b": "namespace selected by dataPlane.excludeSelector",
        "c": "namespace not selected by dataPlane.includeSelector",
        "d": "namespace annotated upgrader.io/skip",
    }


@pytest.mark.parametrize(
    ("workload", "down"),
    [
        (_w("Deployment", "a", "x", 2), 0),  # 25% of 2 rounds down to 0 unavailable (surge 1)
        (_w("Deployment", "a", "x", 8), 2),
        (_w("Deployment", "a", "x", 4, max_unavailable="0", max_surge="0"), 1),  # the controller forces 1
        (_w("Deployment", "a", "x", 4, max_unavailable="50%"), 2),
        (_w("Deployment", "a", "x", 3, strategy="Recreate"), 3),
        (_w("StatefulSet", "a", "x", 3), 1),
        (_w("StatefulSet", "a", "x", 3, max_unavailable="2"), 2),
        (_w("DaemonSet", "a", "x", 3), 1),
        (_w("DaemonSet", "a", "x", 3, max_unavailable="0", max_surge="1"), 0),
    ],
)
def test_pods_down_at_once_follow_each_kinds_rollout_strategy(workload: Workload, down: int) -> None:
    assert down_at_once(workload) == down


def test_a_budget_blocks_only_what_it_cannot_absorb() -> None:
    zero = Budget("a", "x", {"app": "x"}, 0, max_unavailable="0")
    surge_only = _w("Deployment", "a", "x", 2)
    assert budget_block(surge_only, [zero]) is None, "a surge-only rollout takes nothing down"
    stateful = _w("StatefulSet", "a", "x", 3)
    reason = budget_block(stateful, [zero])
    assert reason is not None
    assert "PodDisruptionBudget a/x (maxUnavailable 0) allows 0 disruption(s)" in reason
    assert "takes up to 1 pod(s) down at once" in reason
    assert budget_block(stateful, [Budget("a", "x", {"app": "x"}, 1, min_available="2")]) is None
    assert budget_block(stateful, [Budget("b", "x", {"app": "x"}, 0)]) is None, "other namespace"
    assert budget_block(stateful, [Budget("a", "x", {"app": "other"}, 0)]) is None, "selects other pods"


def test_a_workload_under_two_blocking_budgets_names_both() -> None:
    """Every budget that cannot absorb the restart is named, not only the first."""
    stateful = _w("StatefulSet", "a", "x", 3)
    budgets = [
        Budget("a", "x-min", {"app": "x"}, 0, min_available="3"),
        Budget("a", "x-zero", {"app": "x"}, 0, max_unavailable="0"),
        Budget("a", "x-loose", {"app": "x"}, 1, max_unavailable="1"),
    ]
    assert [b.name for b in blocking_budgets(stateful, budgets)] == ["x-min", "x-zero"]
    reason = budget_block(stateful, budgets)
    assert reason is not None
    assert "PodDisruptionBudget a/x-min (minAvailable 3)" in reason
    assert "PodDisruptionBudget a/x-zero (maxUnavailable 0)" in reason
    assert "x-loose" not in reason


@pytest.mark.parametrize(
    ("workload", "says", "never"),
    [
        pytest.param(
            _w("Deployment", "a", "x", 4, max_unavailable="1", max_surge="0"),
            "set Deployment a/x's maxSurge to at least 1 and maxUnavailable to 0",
            "its maxSurge is",
            id="a deployment without surge is told to add surge too (maxUnavailable 0 alone is rejected)",
        ),
        pytest.param(
            _w("Deployment", "a", "x", 8),
            "set Deployment a/x's maxUnavailable to 0 (surge only; its maxSurge is 25%)",
            "at least 1",
            id="a deployment that already surges is told to drop maxUnavailable only",
        ),
        pytest.param(
            _w("Deployment", "a", "x", 3, strategy="Recreate"),
            "switch Deployment a/x to strategy RollingUpdate with maxSurge 1 and maxUnavailable 0",
            "its maxSurge is",
            id="a Recreate deployment is told to switch strategy",
        ),
        pytest.param(
            _w("StatefulSet", "a", "x", 3),
            "StatefulSet a/x cannot surge",
            "maxUnavailable to 0",
            id="a statefulset is told to relax the budget, never to surge",
        ),
        pytest.param(
            _w("DaemonSet", "a", "x", 3),
            "set DaemonSet a/x's maxSurge to at least 1 and maxUnavailable to 0",
            "its maxSurge is",
            id="a daemonset is told to surge",
        ),
    ],
)
def test_the_budget_hint_fits_the_workloads_own_strategy(workload: Workload, says: str, never: str) -> None:
    hint = budget_hint(workload)
    assert says in hint
    assert never not in hint
    assert "upgrader.io/skip=true" in hint


def test_next_starts_keeps_per_namespace_and_namespace_limits() -> None:
    pending = [_w("Deployment", ns, f"w{i}") for ns in ("a", "b", "c") for i in range(3)]
    throttle = Throttle(per_namespace=2, namespaces=2)
    first = next_starts(pending, [], throttle, now=0, last_start=None)
    assert [(w.namespace, w.name) for w in first] == [("a", "w0"), ("a", "w1"), ("b", "w0"), ("b", "w1")]
    running = [first[0], first[2], first[3]]  # a/w1 finished
    rest = [w for w in pending if w not in first]
    assert [(w.namespace, w.name) for w in next_starts(rest, running, throttle, now=1, last_start=0)] == [("a", "w2")]


def test_next_starts_spaces_starts_by_the_global_rate() -> None:
    pending = [_w("Deployment", "a", f"w{i}") for i in range(3)]
    throttle = Throttle(per_namespace=5, namespaces=1, per_minute=30)  # one start every 2 s
    assert len(next_starts(pending, [], throttle, now=100, last_start=None)) == 1
    assert next_starts(pending, [], throttle, now=101, last_start=100) == []
    assert len(next_starts(pending, [], throttle, now=102, last_start=100)) == 1


def _gate(w: Workload, pods: list[Pod], *, elapsed: float = 1) -> tuple[str, str]:
    v = assess(w, pods, marker=MARK, version="stable-2.14.10", elapsed=elapsed, timeout=60)
    return v.state, v.reason


def test_the_gate_passes_a_finished_rollout_of_new_ready_pods_at_the_version() -> None:
    w = _w("Deployment", "a", "web")
    pods = [_pod("a", f"web-abc-{i}", ("ReplicaSet", "web-abc")) for i in range(2)]
    assert _gate(w, pods) == ("passed", "")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"updated": 1}, "rollout incomplete"),
        ({"total": 3}, "rollout incomplete"),
        ({"observed_generation": 1, "generation": 2}, "rollout incomplete"),
        ({"revision_settled": False}, "rollout incomplete"),
    ],
)
def test_the_gate_waits_for_the_controller(change: dict[str, object], expected: str) -> None:
    w = _w("Deployment", "a", "web", **change)
    pods = [_pod("a", f"web-abc-{i}", ("ReplicaSet", "web-abc")) for i in range(2)]
    state, reason = _gate(w, pods)
    assert state == "rolling"
    assert expected in reason


def test_the_gate_checks_every_pod_is_new_ready_and_at_the_version() -> None:
    w = _w("Deployment", "a", "web", 3, ready=3)
    pods = [
        _pod("a", "web-abc-0", ("ReplicaSet", "web-abc"), annotations={}),
        _pod("a", "web-abc-1", ("ReplicaSet", "web-abc"), ready=False, phase="Pending"),
        _pod("a", "web-abc-2", ("ReplicaSet", "web-abc"), version="stable-2.13.7"),
    ]
    state, reason = _gate(w, pods)
    assert state == "rolling"
    assert "1 pod(s) not replaced yet" in reason
    assert "not Ready: web-abc-1 (Pending)" in reason
    assert "proxy not at stable-2.14.10: web-abc-2 (stable-2.13.7)" in reason
    state, reason = _gate(w, pods, elapsed=61)
    assert state == "failed"
    assert reason.startswith("not healthy after 60s")


def test_the_gate_fails_a_restart_loop_at_once() -> None:
    w = _w("Deployment", "a", "web", 1)
    looping = [_pod("a", "web-abc-0", ("ReplicaSet", "web-abc"), waiting=("CrashLoopBackOff",), ready=False)]
    assert _gate(w, looping) == ("failed", "restart loop: web-abc-0 (CrashLoopBackOff)")
    restarting = [_pod("a", "web-abc-0", ("ReplicaSet", "web-abc"), restarts=4)]
    assert _gate(w, restarting) == ("failed", "restart loop: web-abc-0 (4 restarts)")


def test_the_gate_ignores_terminating_pods_and_counts_daemon_set_pods() -> None:
    ds = _w("DaemonSet", "a", "agent", 2, total=None)
    pods = [
        _pod("a", "agent-1", ("DaemonSet", "agent")),
        _pod("a", "agent-2", ("DaemonSet", "agent")),
        _pod("a", "agent-old", ("DaemonSet", "agent"), annotations={}, phase="Terminating"),
    ]
    assert _gate(ds, pods) == ("passed", "")
    assert _gate(ds, pods[:1])[0] == "rolling"


def test_a_gate_over_one_namespaces_pods_judges_as_over_all_pods() -> None:
    """pods_by_namespace keeps every pod, in order, under its namespace: the gate's verdicts do not change."""
    pods = [
        _pod("shop", "web-abc-1", ("ReplicaSet", "web-abc")),
        _pod("edge", "web-abc-1", ("ReplicaSet", "web-abc"), ready=False),
        _pod("shop", "web-abc-2", ("ReplicaSet", "web-abc"), annotations={}),
    ]
    grouped = pods_by_namespace(pods)
    assert grouped == {"shop": [pods[0], pods[2]], "edge": [pods[1]]}
    for ns in ("shop", "edge"):
        web = _w("Deployment", ns, "web", replicas=2 if ns == "shop" else 1)
        kw = {"marker": MARK, "version": "stable-2.14.10", "elapsed": 1.0, "timeout": 60.0}
        assert assess(web, grouped[ns], **kw) == assess(web, pods, **kw)  # type: ignore[arg-type]


def test_with_every_slot_taken_nothing_starts_and_a_freed_slot_goes_to_a_running_namespace() -> None:
    """2 namespaces x 2 running: nothing starts; once one of a's finishes, a (already running) gets the slot."""
    throttle = Throttle(per_namespace=2, namespaces=2)
    running = [_w("Deployment", ns, f"r{i}") for ns in ("a", "b") for i in range(2)]
    pending = [_w("Deployment", "c", "w0"), _w("Deployment", "a", "w9")]
    assert next_starts(pending, running, throttle, now=0, last_start=None) == []
    started = next_starts(pending, running[1:], throttle, now=0, last_start=None)
    assert [(w.namespace, w.name) for w in started] == [("a", "w9")]


def test_a_budget_in_another_namespace_or_selecting_other_pods_never_blocks() -> None:
    """Only budgets of the workload's namespace that select its pods are weighed."""
    web = _w("Deployment", "shop", "web", replicas=1, strategy="RollingUpdate", max_surge="0", max_unavailable="1")
    elsewhere = Budget("edge", "web", {"app": "web"}, 0, max_unavailable="0")
    other_pods = Budget("shop", "db", {"app": "db"}, 0, max_unavailable="0")
    mine = Budget("shop", "web", {"app": "web"}, 0, max_unavailable="0")
    assert blocking_budgets(web, [elsewhere, other_pods]) == []
    assert blocking_budgets(web, [elsewhere, other_pods, mine]) == [mine]
