"""Every kind of hop the planner makes is run by the executor, on the fake cluster.

The scenarios are keyed by ``planning.HOP_KINDS`` (the planner's own enumeration): a new kind
of hop fails ``test_every_hop_kind_has_a_scenario`` until it is run here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from tests.fakes import MemoryStore
from tests.test_execution import NOW, FakeCluster
from upgrader.catalog import default_catalog
from upgrader.checkpoints import Checkpoint
from upgrader.execution import Executor, RunStoppedError
from upgrader.planning import HOP_KINDS, STEP_TYPES, Observed, Plan, build_offering, make_plan
from upgrader.ports import HelmRelease, ReleaseObject
from upgrader.spec import Spec
from upgrader.states import ROUTES, RunState, route_of

CAT = default_catalog()
CHART_RELEASE = {
    (chart, version): str(release)
    for release, entry in CAT.releases_by_version().items()
    for chart, version in entry.charts.items()
    if chart in ("linkerd2", "linkerd-control-plane")
}
LEGACY_OBJECTS = [
    ReleaseObject("apiextensions.k8s.io/v1", "CustomResourceDefinition", "serviceprofiles.linkerd.io"),
    ReleaseObject("apiextensions.k8s.io/v1", "CustomResourceDefinition", "servers.policy.linkerd.io"),
    ReleaseObject("apps/v1", "Deployment", "linkerd-destination", "linkerd"),
    ReleaseObject("v1", "ConfigMap", "linkerd-config", "linkerd"),
    ReleaseObject("apiextensions.k8s.io/v1", "CustomResourceDefinition", "trafficsplits.split.smi-spec.io"),
    ReleaseObject("v1", "Namespace", "linkerd"),
]


@dataclass
class HopCluster(FakeCluster):
    """The fake cluster from any release since 2.10: the linkerd2 chart before 2.12, split charts after."""

    start: str = "stable-2.13.7"
    proxies: str | None = None  # the data plane's proxy version when it differs from the control plane
    owners: dict[str, str] = field(default_factory=dict)  # object -> release owning it (meta.helm.sh)
    removed_records: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.version = self.start
        charts = dict(CAT.releases_by_version()[CAT.parse(self.start)].charts)
        if "linkerd2" in charts:
            self.releases = {
                "linkerd2": HelmRelease(
                    "linkerd2", "linkerd", 1, "deployed", "linkerd2", charts["linkerd2"], self.start
                )
            }
            self.owners = {str(o): "linkerd2" for o in LEGACY_OBJECTS}
        else:
            self.releases = {
                "linkerd-crds": HelmRelease(
                    "linkerd-crds", "linkerd", 1, "deployed", "linkerd-crds", charts["linkerd-crds"]
                ),
                "linkerd-control-plane": HelmRelease(
                    "linkerd-control-plane",
                    "linkerd",
                    1,
                    "deployed",
                    "linkerd-control-plane",
                    charts["linkerd-control-plane"],
                    self.start,
                ),
            }
        self.pod_versions = {"shop/web": self.proxies or self.start}

    def chart_defaults(self, chart: str, version: str) -> dict[str, Any]:
        return {
            "linkerdVersion": CHART_RELEASE.get((chart.rsplit("/", maxsplit=1)[-1], version), "x"),
            "identityTrustAnchorsPEM": "",
        }

    def _moved(self, name: str, version: str, values: dict[str, Any]) -> None:
        if name in ("linkerd2", "linkerd-control-plane"):
            assert values["identityTrustAnchorsPEM"] == "A", "certificates must travel with the values"
            assert "linkerdVersion" not in values, "chart defaults are not sent as values"
            self.version = CHART_RELEASE[(name, version)]

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
        self._supersede(name)  # helm history keeps the revision it replaces
        old = self.releases[name]
        self._moved(name, version, values)
        new = replace(old, revision=old.revision + 1, chart_version=version, app_version=self.version)
        self.releases[name] = new
        return new

    def install(self, name: str, chart: str, namespace: str, values: dict[str, Any], *, version: str) -> HelmRelease:
        self.actions.append(f"install {name} {version}")
        assert name not in self.releases, f"{name} installed twice"
        mine = [o for o, owner in self.owners.items() if owner == name]
        assert mine, f"{name} installed before any object was handed to it"
        self._moved(name, version, values)
        self.releases[name] = HelmRelease(name, namespace, 1, "deployed", name, version, self.version)
        return self.releases[name]

    def chart_objects(self, chart: str, version: str, namespace: str, values: dict[str, Any]) -> list[ReleaseObject]:
        """What each 2.12 chart renders: the Linkerd CRDs, or the control plane (never TrafficSplit)."""
        if chart.endswith("linkerd-crds"):
            return [o for o in LEGACY_OBJECTS if o.kind == "CustomResourceDefinition" and "linkerd.io" in o.name]
        return [o for o in LEGACY_OBJECTS if o.kind in ("Deployment", "ConfigMap")]

    def release_objects(self, name: str, namespace: str) -> list[ReleaseObject]:
        return list(LEGACY_OBJECTS) if name in self.releases else []

    def adopt(self, obj: ReleaseObject, release: str, namespace: str) -> None:
        self.actions.append(f"adopt {obj} {release}")
        self.owners[str(obj)] = release

    def remove_release_record(self, name: str, namespace: str) -> int:
        self.actions.append(f"remove-record {name}")
        self.releases.pop(name)
        self.removed_records.append(name)
        return 1


@dataclass(frozen=True)
class Scenario:
    start: str
    target: str
    proxies: str | None = None
    acks: frozenset[str] = frozenset()


SCENARIOS: dict[str, Scenario] = {
    "upgrade": Scenario("stable-2.13.7", "stable-2.14.10"),
    "rollback": Scenario("stable-2.14.10", "stable-2.13.7"),
    "data-plane": Scenario("stable-2.13.7", "stable-2.13.7", proxies="stable-2.12.6"),
    "linkerd2-upgrade": Scenario("stable-2.10.2", "stable-2.11.5"),
    "chart-split": Scenario("stable-2.11.5", "stable-2.12.6", acks=frozenset({"chart-split-2.12"})),
}


def _plan(scenario: Scenario) -> Plan:
    offering, _ = build_offering(CAT, None)
    observed = Observed(CAT.parse(scenario.start), {"shop": {scenario.proxies or scenario.start: 2}}, "v1.22.0")
    spec = Spec(waivers=["kubernetes-version"])
    return make_plan(observed, CAT.parse(scenario.target), offering, CAT, spec, acks=scenario.acks)


def _run(cluster: HopCluster, plan: Plan) -> Checkpoint:
    checkpoint = Checkpoint.new("run-1", plan.as_json(), NOW)
    executor = Executor(
        plan,
        Spec(waivers=["kubernetes-version"]),
        CAT,
        cluster,
        MemoryStore(),
        checkpoint,
        clock=lambda: cluster.now,
        sleep=cluster.sleep,
    )
    return executor.run()


def _executor(cluster: HopCluster, plan: Plan, spec: Spec | None = None) -> tuple[Executor, Checkpoint]:
    checkpoint = Checkpoint.new("run-1", plan.as_json(), NOW)
    executor = Executor(
        plan, spec or Spec(), CAT, cluster, MemoryStore(), checkpoint, clock=lambda: cluster.now, sleep=cluster.sleep
    )
    return executor, checkpoint


def test_every_hop_kind_has_a_scenario() -> None:
    assert set(SCENARIOS) == set(HOP_KINDS)


@pytest.mark.parametrize("kind", HOP_KINDS)
def test_every_hop_kind_runs_to_done(kind: str) -> None:
    """The planner makes a hop of this kind, and the executor runs its typed steps to Done."""
    scenario = SCENARIOS[kind]
    plan = _plan(scenario)
    assert plan.refused is None, plan.refused
    assert kind in [h.kind for h in plan.hops], [h.kind for h in plan.hops]
    for hop in plan.hops:
        assert route_of(s.state for s in hop.steps) in ROUTES, f"{hop.kind}: a route the state table does not know"
    cluster = HopCluster(start=scenario.start, proxies=scenario.proxies)
    result = _run(cluster, plan)
    assert result.state == RunState.DONE, result.errors
    assert cluster.version == scenario.target
    assert cluster.pod_versions == {"shop/web": scenario.target}
    assert not result.errors


def test_the_chart_split_adopts_the_linkerd2_objects_and_removes_only_its_record() -> None:
    """CRDs go to linkerd-crds, the rest to linkerd-control-plane, each adopted before its install."""
    scenario = SCENARIOS["chart-split"]
    cluster = HopCluster(start=scenario.start)
    result = _run(cluster, _plan(scenario))
    assert result.state == RunState.DONE, result.errors
    crds = [a for a in cluster.actions if a.startswith(("adopt CustomResourceDefinition", "install linkerd-crds"))]
    assert crds[-1] == "install linkerd-crds 1.4.0"
    assert len(crds) == 3
    assert cluster.owners == {
        "CustomResourceDefinition serviceprofiles.linkerd.io": "linkerd-crds",
        "CustomResourceDefinition servers.policy.linkerd.io": "linkerd-crds",
        "Deployment linkerd/linkerd-destination": "linkerd-control-plane",
        "ConfigMap linkerd/linkerd-config": "linkerd-control-plane",
        "CustomResourceDefinition trafficsplits.split.smi-spec.io": "linkerd2",  # in no 2.12 chart: left alone
        "Namespace linkerd": "linkerd2",
    }
    assert any("trafficsplits.split.smi-spec.io" in r and "Namespace linkerd" in r for r in result.reported)
    assert cluster.removed_records == ["linkerd2"]
    assert set(cluster.releases) == {"linkerd-crds", "linkerd-control-plane"}
    assert result.releases["linkerd2"].before == 1


def test_the_chart_split_installs_with_the_last_deployed_linkerd2_revisions_values() -> None:
    """linkerd2 revision 2 failed (an unschedulable nodeSelector): the split carries revision 1's values."""
    scenario = SCENARIOS["chart-split"]
    installed: dict[str, dict[str, Any]] = {}

    class Cluster(HopCluster):
        def install(
            self, name: str, chart: str, namespace: str, values: dict[str, Any], *, version: str
        ) -> HelmRelease:
            installed[name] = values
            return super().install(name, chart, namespace, values, version=version)

    cluster = Cluster(start=scenario.start)
    cluster.values_of["linkerd2", 2] = {"nodeSelector": {"upgrader-e2e/none": "true"}}
    cluster._supersede("linkerd2")
    cluster.releases["linkerd2"] = replace(cluster.releases["linkerd2"], revision=2, status="failed")
    result = _run(cluster, _plan(scenario))
    assert result.state == RunState.DONE, result.errors
    assert installed["linkerd-control-plane"]["identityTrustAnchorsPEM"] == "A"
    assert "nodeSelector" not in installed["linkerd-control-plane"]


def test_a_split_resumed_after_the_crds_part_does_not_install_twice() -> None:
    """Killed after linkerd-crds was installed: the resumed run observes it and goes on."""
    scenario = SCENARIOS["chart-split"]
    plan = _plan(scenario)
    cluster = HopCluster(start=scenario.start)
    executor, checkpoint = _executor(cluster, plan, Spec())
    original = cluster.install

    def die_after_crds(name: str, *args: Any, **kwargs: Any) -> HelmRelease:
        release = original(name, *args, **kwargs)
        if name == "linkerd-crds":
            raise KeyboardInterrupt
        return release

    cluster.install = die_after_crds  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        executor.run()
    cluster.install = original  # type: ignore[method-assign]
    resumed = Executor(
        plan, Spec(), CAT, cluster, MemoryStore(), checkpoint, clock=lambda: cluster.now, sleep=cluster.sleep
    ).run()
    assert resumed.state == RunState.DONE
    assert [a for a in cluster.actions if a.startswith("install")] == [
        "install linkerd-crds 1.4.0",
        "install linkerd-control-plane 1.9.8",
    ]


def test_a_rollback_across_the_chart_split_is_refused_by_the_planner() -> None:
    plan = _plan(Scenario("stable-2.12.6", "stable-2.11.5"))
    assert plan.refused is not None
    assert plan.refused.code == "unsupported-hop"


def test_every_step_type_appears_in_some_hop_kind() -> None:
    """No step type exists that no scenario's plan uses (each is dispatched and run above)."""
    used = {type(s) for kind in HOP_KINDS for hop in _plan(SCENARIOS[kind]).hops for s in hop.steps}
    assert used == set(STEP_TYPES)


def test_an_error_inside_a_step_ends_failed_with_its_reason() -> None:
    """A values error (or any UpgraderError) in a step is recorded: Failed, reason and next command stored."""
    scenario = SCENARIOS["upgrade"]
    cluster = HopCluster(start=scenario.start)
    spec = Spec(waivers=["kubernetes-version"])
    plan = _plan(scenario)
    checkpoint = Checkpoint.new("run-1", plan.as_json(), NOW)

    def broken(*_a: Any, **_k: Any) -> dict[str, Any]:
        from upgrader.values import ValuesError  # noqa: PLC0415

        raise ValuesError("the identity certificates would change", hint="keep identityTrustAnchorsPEM")

    cluster.all_values = broken  # type: ignore[method-assign]
    executor = Executor(
        plan, spec, CAT, cluster, MemoryStore(), checkpoint, clock=lambda: cluster.now, sleep=cluster.sleep
    )
    with pytest.raises(RunStoppedError) as err:
        executor.run()
    assert err.value.exit_code == 1
    assert checkpoint.state == RunState.FAILED
    assert checkpoint.stopped_in == RunState.UPGRADING_CONTROL_PLANE
    assert "identity certificates would change" in checkpoint.errors[-1]
    assert checkpoint.next_command == "keep identityTrustAnchorsPEM"


def test_an_internal_error_inside_a_step_is_recorded_before_it_escapes() -> None:
    scenario = SCENARIOS["upgrade"]
    cluster = HopCluster(start=scenario.start)
    plan = _plan(scenario)
    cluster.control_plane_ready = lambda ns: {}["boom"]  # type: ignore[method-assign,return-value]
    executor, checkpoint = _executor(cluster, plan, Spec())
    with pytest.raises(KeyError):
        executor.run()
    assert checkpoint.state == RunState.FAILED
    assert "internal error KeyError" in checkpoint.errors[-1]


def test_preflight_stop_exits_4_and_its_hint_repeats_the_run_options() -> None:
    from upgrader.preflight import failed  # noqa: PLC0415

    scenario = SCENARIOS["upgrade"]
    cluster = HopCluster(start=scenario.start)
    cluster.preflight_errors = [failed("identity.issuer-validity", "identity", "expires in 69 days", "rotate")]
    plan = _plan(scenario)
    executor, checkpoint = _executor(cluster, plan, Spec())
    checkpoint.options = {"min_cert_days": 75, "repo": "linkerd"}
    with pytest.raises(RunStoppedError) as err:
        executor.run()
    assert err.value.exit_code == 4
    assert "upgrader preflight --to stable-2.14.10 --min-cert-days 75 --repo linkerd" in err.value.hint


def test_a_resume_of_a_run_another_run_finished_restarts_nothing() -> None:
    """The cluster is already at the target with every proxy on it: Done, no restart, no helm call."""
    scenario = SCENARIOS["upgrade"]
    plan = _plan(scenario)
    cluster = HopCluster(start=scenario.target)  # someone else finished the upgrade
    checkpoint = Checkpoint.new("run-1", plan.as_json(), NOW)
    checkpoint.state, checkpoint.stopped_in, checkpoint.hop = RunState.FAILED, RunState.UPGRADING_CRDS, 0
    executor = Executor(
        plan, Spec(), CAT, cluster, MemoryStore(), checkpoint, clock=lambda: cluster.now, sleep=cluster.sleep
    )
    assert executor.already_at_target()
    executor.finish_elsewhere("already there")
    assert checkpoint.state == RunState.DONE
    assert cluster.actions == []
    passed = [e.state for e in checkpoint.events]
    assert passed[-1] == RunState.DONE
    assert RunState.VERIFYING_DATA_PLANE in passed, "every state of the route passed (observed done), legally"


def test_never_at_target_while_proxies_lag() -> None:
    scenario = SCENARIOS["upgrade"]
    cluster = HopCluster(start=scenario.target, proxies=scenario.start)
    executor, _checkpoint = _executor(cluster, _plan(scenario), Spec())
    assert not executor.already_at_target()


def test_a_step_in_a_state_its_type_never_runs_in_is_refused() -> None:
    """A stored plan cannot smuggle in a wrong route: a restart in UpgradingCRDs does not validate."""
    from pydantic import ValidationError  # noqa: PLC0415

    from upgrader.planning import RestartWave  # noqa: PLC0415

    with pytest.raises(ValidationError, match="RestartWave step runs in RestartingDataPlane"):
        RestartWave(state=RunState.UPGRADING_CRDS, name="wave all", wave=0)


def test_rollback_returns_the_linkerd2_release_too() -> None:
    """After a linkerd2-chart hop, rollback takes linkerd2 back to its revision before the run."""
    scenario = SCENARIOS["linkerd2-upgrade"]
    plan = _plan(scenario)
    cluster = HopCluster(start=scenario.start)
    executor, checkpoint = _executor(cluster, plan, Spec())
    assert executor.run().state == RunState.DONE
    executor.rollback()
    assert checkpoint.state == RunState.ROLLED_BACK
    assert "rollback linkerd2 1" in cluster.actions


def test_a_rollback_after_the_split_started_is_refused_and_changes_nothing() -> None:
    scenario = SCENARIOS["chart-split"]
    plan = _plan(scenario)
    cluster = HopCluster(start=scenario.start)
    executor, checkpoint = _executor(cluster, plan, Spec())
    assert executor.run().state == RunState.DONE
    before = list(cluster.actions)
    from upgrader.errors import InputError  # noqa: PLC0415

    with pytest.raises(InputError, match=r"2\.12 chart split"):
        executor.rollback()
    assert cluster.actions == before
    assert checkpoint.state == RunState.DONE


def test_a_failing_rollback_ends_failed_with_its_reason() -> None:
    scenario = SCENARIOS["upgrade"]
    plan = _plan(scenario)
    cluster = HopCluster(start=scenario.start)
    executor, checkpoint = _executor(cluster, plan, Spec())
    executor.run()

    def broken(*_a: Any, **_k: Any) -> HelmRelease:
        from upgrader.errors import HelmError  # noqa: PLC0415

        raise HelmError("Error: release has no 1 version")

    cluster.rollback = broken  # type: ignore[method-assign]
    with pytest.raises(RunStoppedError):
        executor.rollback()
    assert checkpoint.state == RunState.FAILED
    assert checkpoint.stopped_in == RunState.ROLLING_BACK
    assert "release has no 1 version" in checkpoint.errors[-1]
    assert checkpoint.next_command is not None


def test_not_at_target_while_an_extension_or_the_control_plane_chart_lags() -> None:
    """Control plane version alone is not enough: every release step of the last hop must be observed done."""
    scenario = SCENARIOS["upgrade"]
    plan = _plan(scenario)
    cluster = HopCluster(start=scenario.target)
    old = cluster.releases["linkerd-crds"]
    cluster.releases["linkerd-crds"] = replace(old, chart_version="1.6.1")
    executor, _checkpoint = _executor(cluster, plan, Spec())
    assert not executor.already_at_target()
