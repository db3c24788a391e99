"""The executor: steps in order with checkpoints, nothing redone on resume, preflight gates, rollback."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from tests.fakes import MemoryStore
from upgrader.catalog import default_catalog
from upgrader.checkpoints import Checkpoint
from upgrader.dataplane import Key
from upgrader.execution import RESTARTED_BY, Executor, RunStoppedError
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.ports import (
    Budget,
    Container,
    CustomResourceDefinition,
    DataPlaneView,
    HelmRelease,
    HelmRevision,
    Namespace,
    Pod,
    ReleaseObject,
    Workload,
)
from upgrader.preflight import CheckResult, failed
from upgrader.spec import Spec
from upgrader.states import RunState

CAT = default_catalog()
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
CHARTS = {
    "stable-2.12.6": ("1.4.0", "1.9.8"),
    "stable-2.13.7": ("1.6.1", "1.12.7"),
    "stable-2.14.10": ("1.8.0", "1.16.11"),
    "edge-25.4.4": ("2025.4.4", "2025.4.4"),
    "edge-25.10.7": ("2025.10.7", "2025.10.7"),
}
PROXY = "cr.l5d.io/linkerd/proxy"
VERSION_OF = {cp: v for v, (_, cp) in CHARTS.items()}


@dataclass
class FakeCluster:
    """ExecutorPorts in memory: releases, linkerd-config, workloads whose pods follow the control plane."""

    version: str = "stable-2.12.6"
    releases: dict[str, HelmRelease] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    preflight_errors: list[CheckResult] = field(default_factory=list)
    fail_upgrade_of: str | None = None
    workload_list: list[Workload] = field(default_factory=list)
    pod_versions: dict[str, str] = field(default_factory=dict)  # "ns/name" -> proxy of its current pods
    now: dt.datetime = NOW
    ticks_per_rollout: int = 1  # wait_for_change calls (1 s each) a rollout takes
    rolling: dict[Key, int] = field(default_factory=dict)  # workload -> ticks left
    never_ready: set[str] = field(default_factory=set)  # names whose new pods never become Ready
    budgets: list[Budget] = field(default_factory=list)
    timeline: list[tuple[float, str, Key]] = field(default_factory=list)  # (seconds, start|done, workload)
    changes: int = 0
    past: dict[str, list[HelmRevision]] = field(default_factory=dict)  # earlier revisions (helm history)
    values_of: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (release, revision) -> values
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # release -> values of its last upgrade
    gateway: list[CustomResourceDefinition] = field(default_factory=list)  # Gateway API route CRDs in the cluster
    manifest: dict[str, list[ReleaseObject]] = field(default_factory=dict)  # release -> its manifest's objects

    def __post_init__(self) -> None:
        crds, cp = CHARTS[self.version]
        self.releases = {
            "linkerd-crds": HelmRelease("linkerd-crds", "linkerd", 1, "deployed", "linkerd-crds", crds),
            "linkerd-control-plane": HelmRelease(
                "linkerd-control-plane", "linkerd", 1, "deployed", "linkerd-control-plane", cp, self.version
            ),
        }
        self.workload_list = [Workload("Deployment", "shop", "web", 2, 2, 2, 2, 1, 1, pod_labels={"app": "web"})]
        self.pod_versions = {"shop/web": self.version}

    def add(self, kind: str, namespace: str, name: str, replicas: int = 1, **fields: Any) -> None:
        self.workload_list.append(
            Workload(
                kind, namespace, name, replicas, replicas, replicas, replicas, 1, 1, pod_labels={"app": name}, **fields
            )
        )
        self.pod_versions[f"{namespace}/{name}"] = self.version

    def release(self, name: str, namespace: str) -> HelmRelease | None:
        return self.releases.get(name)

    def user_values(self, name: str, namespace: str, revision: int | None = None) -> dict[str, Any]:
        current = self.releases[name].revision if name in self.releases else 0
        base = {"identityTrustAnchorsPEM": "A", "identity": {"issuer": {"tls": {"crtPEM": "C", "keyPEM": "K"}}}}
        return {**base, **self.values_of.get((name, current if revision is None else revision), {})}

    def history(self, name: str, namespace: str) -> list[HelmRevision]:
        now = self.releases[name]
        row = HelmRevision(now.revision, now.status, f"{now.chart_name}-{now.chart_version}", now.app_version, "")
        return [*self.past.get(name, []), row]

    def _supersede(self, name: str) -> None:
        old = self.releases[name]
        status = "superseded" if old.status == "deployed" else old.status
        self.past.setdefault(name, []).append(
            HelmRevision(old.revision, status, f"{old.chart_name}-{old.chart_version}", old.app_version, "")
        )

    def all_values(self, name: str, namespace: str) -> dict[str, Any]:
        return {**self.user_values(name, namespace), "linkerdVersion": self.version}

    def chart_defaults(self, chart: str, version: str) -> dict[str, Any]:
        return {"linkerdVersion": VERSION_OF.get(version, "x"), "identityTrustAnchorsPEM": ""}

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
        self.actions.append(f"upgrade {name} {version}")
        self.sent[name] = values
        if name == self.fail_upgrade_of:  # as helm does: a new revision, marked failed
            from upgrader.errors import HelmError  # noqa: PLC0415

            self._supersede(name)
            old = self.releases[name]
            self.releases[name] = replace(old, revision=old.revision + 1, chart_version=version, status="failed")
            self.values_of[name, old.revision + 1] = values
            raise HelmError("Error: UPGRADE FAILED: context deadline exceeded")
        self._supersede(name)
        old = self.releases[name]
        new = replace(old, revision=old.revision + 1, chart_version=version, status="deployed")
        if name == "linkerd-control-plane":
            assert values["identityTrustAnchorsPEM"] == "A", "certificates must travel with the values"
            assert "linkerdVersion" not in values, "chart defaults are not sent as values"
            self.version = VERSION_OF[version]
            new = replace(new, app_version=self.version)
        self.releases[name] = new
        return new

    def rollback(self, name: str, namespace: str, revision: int) -> HelmRelease:
        self.actions.append(f"rollback {name} {revision}")
        target = next(r for r in self.history(name, namespace) if r.revision == revision)
        self._supersede(name)
        old = self.releases[name]
        chart = target.chart.removeprefix(f"{old.chart_name}-")
        self.releases[name] = replace(old, revision=old.revision + 1, chart_version=chart, status="deployed")
        if name == "linkerd-control-plane":
            self.version = VERSION_OF.get(chart, self.version)
        return self.releases[name]

    def control_plane_version(self, namespace: str) -> str | None:
        return self.version

    def control_plane_ready(self, namespace: str) -> list[str]:
        return []

    def injector_answers(self, namespace: str) -> bool:
        return True

    def control_plane_pods(self, namespace: str) -> list[Pod]:
        return [
            Pod(
                "linkerd", f"{n}-1", containers=(Container("linkerd-proxy", f"cr.l5d.io/linkerd/proxy:{self.version}"),)
            )
            for n in ("linkerd-destination", "linkerd-identity")
        ]

    def crds_stored(self) -> dict[str, tuple[str, ...]]:
        return {"servers.policy.linkerd.io": ("v1beta1", "v1beta3")}

    def crds_served(self, chart: str, version: str) -> dict[str, tuple[str, ...]]:
        self.actions.append(f"render {chart} {version}")
        return {"servers.policy.linkerd.io": ("v1beta1",)}

    def route_crds(self) -> list[CustomResourceDefinition]:
        return list(self.gateway)

    def release_objects(self, name: str, namespace: str) -> list[ReleaseObject]:
        return list(self.manifest.get(name, []))

    def data_plane(self) -> DataPlaneView:
        namespaces = {w.namespace for w in self.workload_list}
        pods = []
        for w in self.workload_list:
            rolling = w.key in self.rolling
            for i in range(w.replicas):
                new = not rolling or (i == 0 and w.name not in self.never_ready and self.rolling[w.key] == 0)
                pods.append(
                    Pod(
                        w.namespace,
                        f"{w.name}-{i}",
                        labels={"linkerd.io/control-plane-ns": "linkerd", "pod-template-hash": "h"},
                        annotations=dict(w.pod_annotations) if new else {},
                        containers=(
                            Container(
                                "linkerd-proxy",
                                f"cr.l5d.io/linkerd/proxy:{self.pod_versions[f'{w.namespace}/{w.name}']}",
                            ),
                        ),
                        owner_kind="ReplicaSet" if w.kind == "Deployment" else w.kind,
                        owner_name=f"{w.name}-h" if w.kind == "Deployment" else w.name,
                        phase="Running",
                        ready=True,
                    )
                )
        workloads = tuple(
            replace(w, updated=0, generation=2, observed_generation=2) if w.key in self.rolling else w
            for w in self.workload_list
        )
        return DataPlaneView(
            tuple(Namespace(n, annotations={"linkerd.io/inject": "enabled"}) for n in sorted(namespaces)),
            workloads,
            tuple(pods),
            tuple(self.budgets),
            self.changes,
        )

    def wait_for_change(self, since: int, timeout: float) -> int:
        """One simulated second: rollouts move on a tick; those whose pods can be Ready complete."""
        self.now += dt.timedelta(seconds=min(1.0, timeout))
        for key in list(self.rolling):
            self.rolling[key] = max(0, self.rolling[key] - 1)
            if self.rolling[key] == 0 and key[2] not in self.never_ready:
                del self.rolling[key]
                self.pod_versions[f"{key[1]}/{key[2]}"] = self.version
                self.timeline.append(((self.now - NOW).total_seconds(), "done", key))
        self.changes += 1
        return self.changes

    def restart(self, workload: Workload, annotations: Mapping[str, str | None]) -> None:
        self.actions.append(f"restart {workload.namespace}/{workload.name}")
        merged = {k: v for k, v in {**workload.pod_annotations, **annotations}.items() if v is not None}
        self.workload_list = [
            replace(w, pod_annotations=merged) if w.key == workload.key else w for w in self.workload_list
        ]
        self.rolling[workload.key] = self.ticks_per_rollout
        self.timeline.append(((self.now - NOW).total_seconds(), "start", workload.key))
        self.changes += 1

    def concurrency(self) -> dict[str, int]:
        """The most workloads of each namespace mid-rollout at once, from the timeline."""
        live: dict[str, int] = {}
        peak: dict[str, int] = {}
        for _, what, key in sorted(self.timeline, key=lambda e: (e[0], e[1] == "start")):
            live[key[1]] = live.get(key[1], 0) + (1 if what == "start" else -1)
            peak[key[1]] = max(peak.get(key[1], 0), live[key[1]])
        return peak

    def sleep(self, seconds: float) -> None:
        self.actions.append(f"sleep {seconds:g}")
        self.now += dt.timedelta(seconds=seconds)

    def preflight(self, plan: Plan, hop_index: int) -> list[CheckResult]:
        self.actions.append(f"preflight {hop_index}")
        return list(self.preflight_errors)


def _plan(current: str, target: str) -> Plan:
    offering, _ = build_offering(CAT, None)
    spec = Spec(waivers=["kubernetes-version"])
    return make_plan(
        Observed(CAT.parse(current), {"shop": {current: 2}}, "v1.24.0"), CAT.parse(target), offering, CAT, spec
    )


def _executor(
    cluster: FakeCluster, plan: Plan, store: MemoryStore, checkpoint: Checkpoint | None = None, spec: Spec | None = None
) -> Executor:
    cp = checkpoint or Checkpoint.new("run-1", plan.as_json(), NOW)
    return Executor(plan, spec or Spec(), CAT, cluster, store, cp, clock=lambda: cluster.now, sleep=cluster.sleep)


def test_two_hops_run_crds_before_control_plane_and_restart_between_hops() -> None:
    """2.12 -> 2.14: per hop preflight, CRDs, control plane, then the data plane; ends Done."""
    cluster, store = FakeCluster(), MemoryStore()
    result = _executor(cluster, _plan("stable-2.12.6", "stable-2.14.10"), store).run()
    assert result.state == RunState.DONE
    assert cluster.actions == [
        "preflight 0",
        "upgrade linkerd-crds 1.6.1",
        "upgrade linkerd-control-plane 1.12.7",
        "restart shop/web",
        "preflight 1",
        "upgrade linkerd-crds 1.8.0",
        "upgrade linkerd-control-plane 1.16.11",
        "restart shop/web",
    ]
    assert result.releases["linkerd-control-plane"].before == 1
    assert result.releases["linkerd-control-plane"].after == [2, 3]
    assert [r.hop for r in result.restarted] == [0, 1]
    assert store.saves > 10, "a checkpoint before and after every step"


def test_resume_after_a_kill_redoes_nothing() -> None:
    """A run killed in UpgradingControlPlane (whose helm upgrade had finished) resumes without repeating it."""
    cluster, store = FakeCluster(), MemoryStore()
    plan = _plan("stable-2.12.6", "stable-2.13.7")
    killed = Checkpoint.new("run-1", plan.as_json(), NOW).model_copy(update={"state": RunState.UPGRADING_CONTROL_PLANE})
    cluster.upgrade("linkerd-crds", "c", "linkerd", {}, version="1.6.1", reset_values=False, reuse_values=False)
    cluster.upgrade(
        "linkerd-control-plane",
        "c",
        "linkerd",
        cluster.user_values("", ""),
        version="1.12.7",
        reset_values=True,
        reuse_values=False,
    )
    cluster.actions.clear()
    result = _executor(cluster, plan, store, killed).run()
    assert result.state == RunState.DONE
    assert cluster.actions == ["restart shop/web"], "no preflight, CRD or control-plane step again"


def test_resume_in_the_data_plane_skips_workloads_already_restarted_by_this_run() -> None:
    """A workload carrying this run's hop marker is not restarted twice."""
    cluster, store = FakeCluster(version="stable-2.13.7"), MemoryStore()
    plan = _plan("stable-2.12.6", "stable-2.13.7")
    cluster.workload_list = [replace(w, pod_annotations={RESTARTED_BY: "run-1/0"}) for w in cluster.workload_list]
    cluster.pod_versions = {"shop/web": "stable-2.13.7"}
    killed = Checkpoint.new("run-1", plan.as_json(), NOW).model_copy(update={"state": RunState.RESTARTING_DATA_PLANE})
    assert _executor(cluster, plan, store, killed).run().state == RunState.DONE
    assert "restart shop/web" not in cluster.actions


def test_preflight_errors_stop_before_anything_changes_and_resume_reruns_them() -> None:
    """An unwaived preflight error fails the run in Preflight with no helm call; resume starts at preflight again."""
    cluster, store = FakeCluster(), MemoryStore()
    cluster.preflight_errors = [failed("disruption.pdb-allows-restart", "disruption", "blocked", "fix it")]
    plan = _plan("stable-2.12.6", "stable-2.13.7")
    executor = _executor(cluster, plan, store)
    with pytest.raises(RunStoppedError, match=r"disruption\.pdb-allows-restart"):
        executor.run()
    saved = store.fetch(run_id="run-1")
    assert saved is not None
    assert (saved.state, saved.stopped_in) == (RunState.FAILED, RunState.PREFLIGHT)
    assert cluster.actions == ["preflight 0"]
    cluster.preflight_errors = []
    assert _executor(cluster, plan, store, saved).run().state == RunState.DONE
    assert cluster.actions[1] == "preflight 0"


def test_a_failed_helm_upgrade_stops_the_run_and_rollback_restores_revisions() -> None:
    """A control-plane upgrade that fails leaves Failed (stopped in UpgradingControlPlane); rollback restores it."""
    cluster, store = FakeCluster(), MemoryStore()
    cluster.fail_upgrade_of = "linkerd-control-plane"
    plan = _plan("stable-2.12.6", "stable-2.13.7")
    executor = _executor(cluster, plan, store)
    with pytest.raises(RunStoppedError, match="context deadline exceeded"):
        executor.run()
    assert (executor.checkpoint.state, executor.checkpoint.stopped_in) == (
        RunState.FAILED,
        RunState.UPGRADING_CONTROL_PLANE,
    )
    assert cluster.releases["linkerd-control-plane"].status == "failed"
    assert executor.rollback().state == RunState.ROLLED_BACK
    assert "rollback linkerd-control-plane 1" in cluster.actions
    assert not any(a.startswith("rollback linkerd-crds") for a in cluster.actions), "CRDs are kept by default"


def test_a_finished_run_can_be_rolled_back_including_restarts() -> None:
    """Rollback of a Done run rolls the control plane back and restarts what the run restarted."""
    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.13.7"), store)
    executor.run()
    cluster.actions.clear()
    assert executor.rollback().state == RunState.ROLLED_BACK
    assert cluster.actions == ["rollback linkerd-control-plane 1", "restart shop/web"]


def test_rolling_back_crds_is_refused_when_a_stored_version_would_no_longer_be_served() -> None:
    """--include-crds checks storedVersions against the older chart first and refuses before touching anything."""
    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.13.7"), store)
    executor.run()
    cluster.actions.clear()
    with pytest.raises(RunStoppedError, match=re.escape("servers.policy.linkerd.io stores v1beta3")):
        executor.rollback(include_crds=True)
    assert cluster.actions == ["render linkerd/linkerd-crds 1.4.0"], "nothing rolled back"


class ServesAll(FakeCluster):
    """The older linkerd-crds chart serves every stored version: only the Gateway API check can refuse."""

    def crds_served(self, chart: str, version: str) -> dict[str, tuple[str, ...]]:
        self.actions.append(f"render {chart} {version}")
        return {"servers.policy.linkerd.io": ("v1beta1", "v1beta3")}


def _route(name: str, release: str, namespace: str, bundle: str) -> CustomResourceDefinition:
    notes = {
        "meta.helm.sh/release-name": release,
        "meta.helm.sh/release-namespace": namespace,
        "gateway.networking.k8s.io/bundle-version": bundle,
        "helm.sh/resource-policy": "keep",
    }
    return CustomResourceDefinition(name, served=("v1",), storage="v1", annotations=notes)


ROUTES = [f"{r}.gateway.networking.k8s.io" for r in ("httproutes", "grpcroutes", "tlsroutes", "tcproutes")]


def test_rolling_crds_back_across_the_2_19_hand_over_is_refused_when_it_would_take_the_crds_back() -> None:
    """2.18 -> 2.19 left the route CRDs annotated for linkerd-crds but out of its manifest (handed over);
    2.18's chart renders them by default, so --include-crds would take them back: refused, nothing rolled back."""
    cluster, store = ServesAll(version="edge-25.4.4"), MemoryStore()
    cluster.gateway = [_route(n, "linkerd-crds", "linkerd", "v1.2.1") for n in ROUTES]
    executor = _executor(cluster, _plan("edge-25.4.4", "edge-25.10.7"), store)
    assert executor.run().state == RunState.DONE
    cluster.actions.clear()
    with pytest.raises(RunStoppedError) as stopped:
        executor.rollback(include_crds=True)
    reason = executor.checkpoint.errors[-1]
    assert f"rolling linkerd-crds back to 2025.4.4 (revision 1) would take back {ROUTES[0]}" in reason
    assert "no Helm release (stale linkerd-crds annotation), bundle v1.2.1" in reason
    assert all(name in reason for name in ROUTES)
    assert "roll back without --include-crds" in str(executor.checkpoint.next_command)
    assert stopped.value is not None
    assert not any(a.startswith("rollback ") for a in cluster.actions), cluster.actions


def test_rolling_crds_back_keeps_going_when_linkerd_crds_still_manages_them_at_the_same_bundle() -> None:
    """The CRDs still in linkerd-crds' manifest at 2.18's bundle: the rollback of linkerd-crds goes ahead."""
    cluster, store = ServesAll(version="edge-25.4.4"), MemoryStore()
    cluster.gateway = [_route(n, "linkerd-crds", "linkerd", "v1.1.1") for n in ROUTES]
    crd = "CustomResourceDefinition"
    cluster.manifest = {"linkerd-crds": [ReleaseObject("apiextensions.k8s.io/v1", crd, n) for n in ROUTES]}
    executor = _executor(cluster, _plan("edge-25.4.4", "edge-25.10.7"), store)
    assert executor.run().state == RunState.DONE
    cluster.actions.clear()
    assert executor.rollback(include_crds=True).state == RunState.ROLLED_BACK
    assert "rollback linkerd-crds 1" in cluster.actions


def test_control_plane_pods_on_the_old_version_fail_verification() -> None:
    """Deployments can look available while pods still run the old proxy: verification names them."""

    class Lagging(FakeCluster):
        def control_plane_pods(self, namespace: str) -> list[Pod]:
            return [
                Pod(
                    "linkerd",
                    "linkerd-identity-old",
                    containers=(Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:stable-2.12.6"),),
                )
            ]

    executor = _executor(Lagging(), _plan("stable-2.12.6", "stable-2.13.7"), MemoryStore())
    with pytest.raises(
        RunStoppedError, match=re.escape("control-plane pods not on stable-2.13.7: linkerd-identity-old")
    ):
        executor.run()


def test_rollback_to_a_checkpoint_undoes_only_what_came_after_it() -> None:
    """Every step boundary is a checkpoint id; rolling back to hop 2's start keeps hop 1's work."""
    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.14.10"), store)
    done = executor.run()
    assert [m.id for m in done.marks] == list(range(1, len(done.marks) + 1))
    hop2 = next(m for m in done.marks if m.hop == 1 and m.state == RunState.PREFLIGHT)
    assert hop2.revisions == {"linkerd-crds": 2, "linkerd-control-plane": 2}
    assert hop2.charts == {"linkerd-crds": "1.6.1", "linkerd-control-plane": "1.12.7"}
    assert hop2.restarted == 1
    cluster.actions.clear()
    result = executor.rollback(to_checkpoint=hop2.id)
    assert result.state == RunState.ROLLED_BACK
    assert cluster.actions == ["rollback linkerd-control-plane 2", "restart shop/web"]
    assert f"checkpoint {hop2.id}" in result.events[-1].reason


def test_rollback_to_an_unknown_checkpoint_is_bad_input_and_changes_nothing() -> None:
    from upgrader.errors import InputError  # noqa: PLC0415

    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.13.7"), store)
    executor.run()
    cluster.actions.clear()
    with pytest.raises(InputError, match="has no checkpoint 99"):
        executor.rollback(to_checkpoint=99)
    assert cluster.actions == []
    assert executor.checkpoint.state == RunState.DONE


def test_rollback_of_crds_to_a_checkpoint_checks_the_chart_of_that_checkpoint() -> None:
    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.14.10"), store)
    done = executor.run()
    hop2 = next(m for m in done.marks if m.hop == 1 and m.state == RunState.PREFLIGHT)
    cluster.actions.clear()
    with pytest.raises(RunStoppedError, match=re.escape("linkerd-crds 1.6.1 does not serve")):
        executor.rollback(include_crds=True, to_checkpoint=hop2.id)
    assert cluster.actions == ["render linkerd/linkerd-crds 1.6.1"]


# ---- one hop back per rollback (at most one major, as `plan` allows) -------------------------------


def test_a_rollback_of_a_two_hop_run_undoes_only_its_last_hop_and_the_next_one_the_hop_before() -> None:
    """2.12 -> 2.14 rolled back: first to 2.13 (hop 2 only), then to 2.12; a third rollback is refused (exit 3)."""
    from upgrader.errors import EXIT_REFUSED  # noqa: PLC0415
    from upgrader.execution import NothingToRollBackError  # noqa: PLC0415

    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.14.10"), store)
    executor.run()
    cluster.actions.clear()
    scope = executor.rollback_scope()
    assert scope.describe() == [
        "rollback of hop 2 (stable-2.13.7 -> stable-2.14.10), back to stable-2.13.7:",
        "  helm rollback linkerd/linkerd-control-plane: revision 3 (1.16.11, deployed) -> revision 2 (1.12.7)",
        "  linkerd-crds: kept at 1.8.0 (CRDs are not rolled back unless --include-crds)",
        "  restart 1 workload(s) with their previous pod template, in: shop",
        "  then `upgrader rollback run-1` again goes one more hop back (hop 1, to stable-2.12.6)",
    ]
    first = executor.rollback()
    assert first.state == RunState.ROLLED_BACK
    assert cluster.actions == ["rollback linkerd-control-plane 2", "restart shop/web"]
    assert cluster.version == "stable-2.13.7", "one major back, not to where the run started"
    assert cluster.releases["linkerd-crds"].chart_version == "1.8.0", "CRDs kept"
    assert first.rolled_back_hops == [1]
    assert first.next_command is not None
    assert "upgrader rollback run-1" in first.next_command
    cluster.actions.clear()
    second = executor.rollback()
    assert second.state == RunState.ROLLED_BACK
    assert cluster.actions == ["rollback linkerd-control-plane 1", "restart shop/web"]
    assert cluster.version == "stable-2.12.6"
    assert second.rolled_back_hops == [0, 1]
    assert second.next_command is None, "nothing is left to roll back"
    cluster.actions.clear()
    with pytest.raises(NothingToRollBackError, match="already rolled back to where it started") as refused:
        executor.rollback()
    assert refused.value.exit_code == EXIT_REFUSED
    assert cluster.actions == []


def test_a_hop_that_failed_before_changing_anything_is_skipped_by_rollback() -> None:
    """Hop 2 stopped in preflight: rollback undoes hop 1, the last hop that changed something."""
    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.14.10"), store)

    def preflight(plan: Plan, hop_index: int) -> list[CheckResult]:
        return [failed("crds.present", "crds", "no CRDs", "install them")] if hop_index == 1 else []

    cluster.preflight = preflight  # type: ignore[method-assign]
    with pytest.raises(RunStoppedError):
        executor.run()
    cluster.actions.clear()
    scope = executor.rollback_scope()
    assert scope.first_hop == 0
    assert scope.where.startswith("hop 1 (stable-2.12.6 -> stable-2.13.7)")
    assert executor.rollback().state == RunState.ROLLED_BACK
    assert cluster.actions == ["rollback linkerd-control-plane 1", "restart shop/web"]


def test_on_failure_rollback_undoes_the_failed_hop_only() -> None:
    """rollback(hop=N) (what onFailure: rollback runs) takes the failed hop back to its start, not the run."""
    cluster, store = FakeCluster(), MemoryStore()
    plan = _plan("stable-2.12.6", "stable-2.14.10")
    executor = _executor(cluster, plan, store)

    original = cluster.upgrade

    def upgrade(name: str, chart: str, namespace: str, values: dict[str, Any], **kw: Any) -> HelmRelease:
        if name == "linkerd-control-plane" and kw["version"] == "1.16.11":
            cluster.fail_upgrade_of = name
        return original(name, chart, namespace, values, **kw)

    cluster.upgrade = upgrade  # type: ignore[method-assign]
    with pytest.raises(RunStoppedError):
        executor.run()
    assert executor.checkpoint.hop == 1
    cluster.actions.clear()
    result = executor.rollback(hop=executor.checkpoint.hop)
    assert result.state == RunState.ROLLED_BACK
    assert cluster.actions == ["rollback linkerd-control-plane 2"], "the failed revision is skipped; hop 1 stays"
    assert cluster.version == "stable-2.13.7"
    assert result.rolled_back_hops == [1]


def test_on_failure_rollback_of_a_hop_that_changed_nothing_says_so_and_leaves_the_run_failed() -> None:
    """helm refused the control-plane upgrade without a revision (CRDs already there): nothing is rolled back."""
    from upgrader.errors import HelmError  # noqa: PLC0415
    from upgrader.execution import NothingToRollBackError  # noqa: PLC0415
    from upgrader.runs import on_failure_rollback  # noqa: PLC0415

    cluster, store = FakeCluster(version="stable-2.13.7"), MemoryStore()
    cluster.releases["linkerd-crds"] = replace(cluster.releases["linkerd-crds"], chart_version="1.8.0")

    def refused(*_a: Any, **_k: Any) -> HelmRelease:
        raise HelmError("Error: UPGRADE FAILED: template: linkerd-control-plane/templates/x.yaml: nil pointer")

    cluster.upgrade = refused  # type: ignore[method-assign]
    executor = _executor(cluster, _plan("stable-2.13.7", "stable-2.14.10"), store)
    with pytest.raises(RunStoppedError) as stopped:
        executor.run()
    next_command = executor.checkpoint.next_command
    with pytest.raises(NothingToRollBackError, match="hop 1 of run run-1 changed nothing"):
        executor.rollback(hop=0)
    ended = on_failure_rollback(executor, stopped.value)
    assert isinstance(ended, RunStoppedError)
    assert "nothing to undo (on_failure: rollback): hop 1 changed nothing" in ended.message
    assert "rolled back" not in ended.message
    assert ended.hint == next_command
    assert executor.checkpoint.state == RunState.FAILED
    assert executor.checkpoint.next_command == next_command
    assert not any(a.startswith("rollback") for a in cluster.actions)


def test_a_rollback_that_fails_unexpectedly_ends_failed_with_a_next_command() -> None:
    """Whatever breaks a rollback (even an error that is not ours), the run ends Failed, never RollingBack."""
    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.13.7"), store)
    executor.run()

    def broken(*_a: Any, **_k: Any) -> HelmRelease:
        raise RuntimeError("helm vanished")

    cluster.rollback = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        executor.rollback()
    saved = store.fetch(run_id="run-1")
    assert saved is not None
    assert (saved.state, saved.stopped_in) == (RunState.FAILED, RunState.ROLLING_BACK)
    assert "helm vanished" in saved.errors[-1]
    assert saved.next_command is not None
    assert "upgrader rollback run-1" in saved.next_command


def test_a_checkpoint_in_a_hop_already_rolled_back_is_refused_and_the_next_rollback_goes_one_hop_back() -> None:
    """2.12 -> 2.14, rollback (hop 2 undone), then --to-checkpoint inside hop 2: refused, it would go forward."""
    from upgrader.errors import InputError  # noqa: PLC0415

    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.14.10"), store)
    done = executor.run()
    executor.rollback()
    assert cluster.version == "stable-2.13.7"
    verify = next(m for m in done.marks if m.hop == 1 and m.state == RunState.VERIFYING_CONTROL_PLANE)
    cluster.actions.clear()
    with pytest.raises(InputError, match=f"checkpoint {verify.id} is in hop 2 .* already undid") as refused:
        executor.rollback(to_checkpoint=verify.id)
    assert "move the installation forward" in refused.value.message
    assert refused.value.hint is not None
    assert "upgrader rollback run-1" in refused.value.hint
    assert cluster.actions == [], "nothing changed"
    assert cluster.version == "stable-2.13.7"
    assert executor.checkpoint.state == RunState.ROLLED_BACK
    assert executor.rollback().rolled_back_hops == [0, 1]
    assert cluster.actions[0] == "rollback linkerd-control-plane 1"
    assert cluster.version == "stable-2.12.6", "one major back from 2.13, not two"


def test_a_rollback_target_newer_than_the_live_chart_is_refused() -> None:
    """The control plane was taken back by hand: returning to hop 2's start (1.12.7) would move it forward."""
    from upgrader.errors import InputError  # noqa: PLC0415

    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.14.10"), store)
    done = executor.run()
    cluster.rollback("linkerd-control-plane", "linkerd", 1)  # by hand: back at 1.9.8
    hop2 = next(m for m in done.marks if m.hop == 1 and m.state == RunState.PREFLIGHT)
    cluster.actions.clear()
    with pytest.raises(
        InputError, match=r"linkerd/linkerd-control-plane to revision 2 \(1.12.7\) would move it forward"
    ):
        executor.rollback(to_checkpoint=hop2.id)
    assert cluster.actions == []
    assert cluster.version == "stable-2.12.6"


def test_a_one_hop_rollback_refuses_a_control_plane_target_more_than_one_major_below_the_live_chart() -> None:
    """A 2.12 -> 2.13 run, then 2.14 installed by hand: rolling the run's hop back would go two majors back."""
    from upgrader.errors import InputError  # noqa: PLC0415

    cluster, store = FakeCluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.12.6", "stable-2.13.7"), store)
    executor.run()
    cluster.upgrade(
        "linkerd-control-plane",
        "linkerd/linkerd-control-plane",
        "linkerd",
        {"identityTrustAnchorsPEM": "A"},
        version="1.16.11",
        reset_values=False,
        reuse_values=True,
    )
    cluster.actions.clear()
    with pytest.raises(
        InputError, match=r"from 1.16.11 \(stable-2.14.10\) to 1.9.8 \(stable-2.12.6\) would go 2 majors"
    ):
        executor.rollback()
    assert cluster.actions == []
    assert cluster.version == "stable-2.14.10"


# ---- a release whose last revision failed ------------------------------------------------------


def _failed_cluster() -> FakeCluster:
    """stable-2.13.7 deployed at revision 1; revision 2 (an unschedulable nodeSelector) failed."""
    cluster = FakeCluster(version="stable-2.13.7")
    cluster.values_of["linkerd-control-plane", 2] = {"nodeSelector": {"upgrader-e2e/none": "true"}}
    cluster._supersede("linkerd-control-plane")
    old = cluster.releases["linkerd-control-plane"]
    cluster.releases["linkerd-control-plane"] = replace(old, revision=2, status="failed")
    return cluster


def test_an_upgrade_carries_the_values_of_the_last_deployed_revision_not_the_failed_one() -> None:
    """helm get values --revision 1: the failed revision's nodeSelector is not carried into the upgrade."""
    cluster, store = _failed_cluster(), MemoryStore()
    assert "nodeSelector" in cluster.user_values("linkerd-control-plane", "linkerd")
    result = _executor(cluster, _plan("stable-2.13.7", "stable-2.14.10"), store).run()
    assert result.state == RunState.DONE
    assert "nodeSelector" not in cluster.sent["linkerd-control-plane"]
    assert cluster.sent["linkerd-control-plane"]["identityTrustAnchorsPEM"] == "A"


def test_rollback_targets_the_last_deployed_revision_before_the_run_never_a_failed_one() -> None:
    """The run started at revision 2 (failed): rollback goes to revision 1, the last deployed one."""
    cluster, store = _failed_cluster(), MemoryStore()
    executor = _executor(cluster, _plan("stable-2.13.7", "stable-2.14.10"), store)
    executor.run()
    assert executor.checkpoint.releases["linkerd-control-plane"].before == 2
    cluster.actions.clear()
    assert executor.rollback().state == RunState.ROLLED_BACK
    assert cluster.actions[0] == "rollback linkerd-control-plane 1"


def test_a_crds_step_never_moves_the_crds_back_even_from_a_stored_plan() -> None:
    """The CRDs are newer than the hop's chart (a rollback kept them): the executor keeps them and says so."""
    cluster, store = FakeCluster(version="stable-2.12.6"), MemoryStore()
    cluster.releases["linkerd-crds"] = replace(cluster.releases["linkerd-crds"], chart_version="1.8.0")
    result = _executor(cluster, _plan("stable-2.12.6", "stable-2.13.7"), store).run()
    assert result.state == RunState.DONE
    assert "upgrade linkerd-crds 1.6.1" not in cluster.actions
    assert cluster.releases["linkerd-crds"].chart_version == "1.8.0"
    assert any("linkerd-crds kept at 1.8.0" in r for r in result.reported)
