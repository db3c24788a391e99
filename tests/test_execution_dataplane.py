"""The executor's data-plane step on the in-memory cluster: waves, throttles, gates, budgets, resume, rollback."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from tests.fakes import MemoryStore
from tests.test_execution import CAT, NOW, FakeCluster, _executor
from upgrader.checkpoints import Checkpoint
from upgrader.errors import UpgraderError
from upgrader.execution import RESTARTED_AT, RESTARTED_BY, RunStoppedError
from upgrader.locking import Heartbeat, LockLostError, lost_error
from upgrader.metrics import Sample
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.ports import Budget, Workload
from upgrader.spec import Spec
from upgrader.states import RunState


def _spec(**data_plane: object) -> Spec:
    return Spec.model_validate({"waivers": ["kubernetes-version"], "dataPlane": data_plane})


def _plan(spec: Spec, namespaces: list[str], target: str = "stable-2.13.7") -> Plan:
    offering, _ = build_offering(CAT, None)
    observed = Observed(CAT.parse("stable-2.12.6"), {ns: {"stable-2.12.6": 1} for ns in namespaces}, "v1.24.0")
    return make_plan(observed, CAT.parse(target), offering, CAT, spec)


def _cluster(**counts: int) -> FakeCluster:
    cluster = FakeCluster()
    cluster.workload_list, cluster.pod_versions = [], {}
    for ns, n in counts.items():
        for i in range(n):
            cluster.add("Deployment", ns, f"app-{i}")
    return cluster


def _restarts(cluster: FakeCluster) -> list[str]:
    return [a.removeprefix("restart ") for a in cluster.actions if a.startswith("restart ")]


def test_throttles_hold_per_namespace_and_namespaces_at_once() -> None:
    """6 + 6 workloads, 2 per namespace, 1 namespace at a time: never more than 2 mid-rollout, one namespace."""
    spec = _spec(maxConcurrentPerNamespace=2, maxNamespaces=1)
    cluster = _cluster(a=6, b=6)
    cluster.ticks_per_rollout = 3
    result = _executor(cluster, _plan(spec, ["a", "b"]), MemoryStore(), spec=spec).run()
    assert result.state == RunState.DONE
    assert sorted(_restarts(cluster)) == sorted(f"{ns}/app-{i}" for ns in "ab" for i in range(6))
    assert cluster.concurrency() == {"a": 2, "b": 2}
    starts_b = min(t for t, what, key in cluster.timeline if what == "start" and key[1] == "b")
    ends_a = max(t for t, what, key in cluster.timeline if what == "done" and key[1] == "a")
    assert starts_b >= ends_a, "namespace b starts only when namespace a has nothing running"
    assert set(cluster.pod_versions.values()) == {"stable-2.13.7"}


def test_the_global_rate_spaces_starts() -> None:
    spec = _spec(maxConcurrentPerNamespace=10, maxRestartsPerMinute=20)  # one start every 3 s
    cluster = _cluster(a=4)
    _executor(cluster, _plan(spec, ["a"]), MemoryStore(), spec=spec).run()
    starts = [t for t, what, _ in cluster.timeline if what == "start"]
    assert len(starts) == 4
    assert all(b - a >= 3 for a, b in itertools.pairwise(starts)), starts


def test_waves_run_in_order_with_their_bake_time() -> None:
    spec = _spec(
        waves=[{"name": "canary", "namespaces": ["a"], "bakeTime": "2m"}, {"name": "rest", "namespaces": ["*"]}]
    )
    cluster = _cluster(a=1, b=2)
    result = _executor(cluster, _plan(spec, ["a", "b"]), MemoryStore(), spec=spec).run()
    assert result.state == RunState.DONE
    tail = [a for a in cluster.actions if a.startswith(("restart", "sleep"))]
    assert tail == ["restart a/app-0", "sleep 120", "restart b/app-0", "restart b/app-1"]
    assert result.waves_done == ["0/0", "0/1"]


def test_a_failed_gate_stops_the_run_and_the_next_wave_never_starts() -> None:
    spec = Spec.model_validate(
        {
            "waivers": ["kubernetes-version"],
            "gates": {"rolloutTimeout": "30s"},
            "dataPlane": {"waves": [{"name": "canary", "namespaces": ["a"]}, {"name": "rest", "namespaces": ["*"]}]},
        }
    )
    cluster = _cluster(a=2, b=2)
    cluster.never_ready = {"app-1"}
    executor = _executor(cluster, _plan(spec, ["a", "b"]), MemoryStore(), spec=spec)
    executor.rollout_timeout = 30
    with pytest.raises(RunStoppedError, match="wave canary: health gate failed: Deployment a/app-1") as info:
        executor.run()
    assert "not healthy after 30s" in info.value.message
    assert "no further workload was restarted" in info.value.hint
    assert not any(r.startswith("b/") for r in _restarts(cluster))
    assert (executor.checkpoint.state, executor.checkpoint.stopped_in) == (
        RunState.FAILED,
        RunState.RESTARTING_DATA_PLANE,
    )
    assert (cluster.now - NOW).total_seconds() < 60, "the gate fails within its timeout, no hang"


def test_a_budget_that_cannot_absorb_a_restart_waits_bounded_then_stops_clearly() -> None:
    spec = _spec(pdbWaitTimeout="20s")
    cluster = _cluster()
    cluster.add("StatefulSet", "a", "db", 3)
    cluster.budgets = [Budget("a", "db", {"app": "db"}, 0, max_unavailable="0")]
    executor = _executor(cluster, _plan(spec, ["a"]), MemoryStore(), spec=spec)
    with pytest.raises(RunStoppedError) as info:
        executor.run()
    message = info.value.message
    assert "PodDisruptionBudget a/db (maxUnavailable 0) allows 0 disruption(s)" in message
    assert "StatefulSet a/db takes up to 1 pod(s) down at once" in message
    assert "waited 20s" in message
    assert "upgrader.io/skip" in info.value.hint
    assert _restarts(cluster) == [], "nothing restarted against the budget"
    assert 20 <= (cluster.now - NOW).total_seconds() < 30


def test_workloads_blocked_by_budgets_do_not_hold_up_their_namespace_and_the_stop_names_every_budget() -> None:
    """Two zero budgets: the rest of the namespace restarts, then the run stops naming both budgets and workloads."""
    spec = _spec(pdbWaitTimeout="20s", maxConcurrentPerNamespace=1)
    cluster = _cluster(a=3)
    cluster.add("Deployment", "a", "aaa", 2, max_surge="0", max_unavailable="1")  # sorts first: used to block all
    cluster.add("StatefulSet", "a", "db", 3)
    cluster.budgets = [
        Budget("a", "aaa-pdb", {"app": "aaa"}, 0, max_unavailable="0"),
        Budget("a", "db-pdb", {"app": "db"}, 0, min_available="3"),
    ]
    executor = _executor(cluster, _plan(spec, ["a"]), MemoryStore(), spec=spec)
    with pytest.raises(RunStoppedError) as info:
        executor.run()
    assert sorted(_restarts(cluster)) == ["a/app-0", "a/app-1", "a/app-2"], "the others went on"
    message, hint = info.value.message, info.value.hint
    assert "2 workload(s) blocked by PodDisruptionBudgets" in message
    assert "PodDisruptionBudget a/aaa-pdb (maxUnavailable 0)" in message
    assert "Deployment a/aaa takes up to 1 pod(s) down at once" in message
    assert "PodDisruptionBudget a/db-pdb (minAvailable 3)" in message
    assert "StatefulSet a/db takes up to 1 pod(s) down at once" in message
    assert "set Deployment a/aaa's maxSurge to at least 1 and maxUnavailable to 0" in hint
    assert "StatefulSet a/db cannot surge" in hint
    assert executor.checkpoint.stopped_in == RunState.RESTARTING_DATA_PLANE
    assert 20 <= (cluster.now - NOW).total_seconds() < 60


def test_a_wave_with_nothing_to_restart_passes_with_a_warning() -> None:
    """An empty wave (the plan warned) is logged and recorded as passed, so status counts it."""
    spec = _spec(waves=[{"name": "canary", "namespaces": ["quiet"]}, {"name": "rest", "namespaces": ["*"]}])
    cluster = _cluster(a=1)
    with capture_logs() as logs:
        result = _executor(cluster, _plan(spec, ["a"]), MemoryStore(), spec=spec).run()
    assert result.state == RunState.DONE
    assert result.waves_done == ["0/0", "0/1"]
    assert _restarts(cluster) == ["a/app-0"]
    assert [e["wave"] for e in logs if e["event"] == "wave-empty"] == ["canary"]


def test_a_surge_only_deployment_is_not_blocked_by_a_zero_budget() -> None:
    spec = _spec()
    cluster = _cluster(a=1)
    cluster.budgets = [Budget("a", "app-0", {"app": "app-0"}, 0, max_unavailable="0")]
    assert _executor(cluster, _plan(spec, ["a"]), MemoryStore(), spec=spec).run().state == RunState.DONE


def test_resume_mid_wave_gates_what_was_patched_and_restarts_only_the_rest() -> None:
    spec = _spec(maxConcurrentPerNamespace=1)
    plan = _plan(spec, ["a"])
    cluster = _cluster(a=3)
    marker = "run-1/0"
    cluster.workload_list = [
        replace(w, pod_annotations={RESTARTED_BY: marker}) if w.name == "app-0" else w for w in cluster.workload_list
    ]
    cluster.rolling[("Deployment", "a", "app-0")] = 1  # patched by the killed run, still rolling
    cluster.version = "stable-2.13.7"
    killed = Checkpoint.new("run-1", plan.as_json(), NOW).model_copy(update={"state": RunState.RESTARTING_DATA_PLANE})
    result = _executor(cluster, plan, MemoryStore(), killed, spec=spec).run()
    assert result.state == RunState.DONE
    assert _restarts(cluster) == ["a/app-1", "a/app-2"], "app-0 was gated, not restarted twice"


def test_rollback_gives_each_workload_its_template_annotations_back() -> None:
    spec = _spec()
    cluster = _cluster(a=1)
    cluster.workload_list = [replace(w, pod_annotations={RESTARTED_AT: "yesterday"}) for w in cluster.workload_list]
    executor = _executor(cluster, _plan(spec, ["a"]), MemoryStore(), spec=spec)
    executor.run()
    assert cluster.workload_list[0].pod_annotations[RESTARTED_BY] == "run-1/0"
    executor.rollback()
    assert cluster.workload_list[0].pod_annotations == {RESTARTED_AT: "yesterday"}, "ours removed, theirs restored"


class _Metrics:
    def __init__(self, after: float) -> None:
        self.after, self.calls = after, 0

    def sample(self, namespace: str, window_seconds: int) -> Sample:
        self.calls += 1
        rate = 0.999 if self.calls == 1 else self.after
        return Sample(namespace, rate, 50.0, 10.0)


@pytest.mark.parametrize(("after", "passes"), [(0.998, True), (0.90, False)])
def test_metric_gates_compare_each_wave_with_before(after: float, passes: bool) -> None:
    spec = _spec(waves=[{"name": "canary", "namespaces": ["a"]}, {"name": "rest", "namespaces": ["*"]}])
    cluster = _cluster(a=1, b=1)
    executor = _executor(cluster, _plan(spec, ["a", "b"]), MemoryStore(), spec=spec)
    executor.metrics = _Metrics(after)
    if passes:
        assert executor.run().state == RunState.DONE
        return
    with pytest.raises(RunStoppedError, match=r"wave canary: metric gate failed: a: success rate 90\.0%"):
        executor.run()
    assert _restarts(cluster) == ["a/app-0"], "wave rest never started"


class _Unanswered:
    """Prometheus answers ``answers`` samples, then refuses every connection until ``back`` is set."""

    def __init__(self, answers: int) -> None:
        self.answers, self.back, self.calls = answers, False, 0

    def sample(self, namespace: str, window_seconds: int) -> Sample:
        from upgrader.metrics import MetricsUnavailableError  # noqa: PLC0415

        self.calls += 1
        if self.calls > self.answers and not self.back:
            raise MetricsUnavailableError(
                "Prometheus at http://prom:9090 did not answer query up: [Errno 111] Connection refused"
            )
        return Sample(namespace, 0.999, 50.0, 10.0)


@pytest.mark.parametrize(
    ("answers", "restarted"),
    [pytest.param(0, [], id="down before the wave: nothing restarted"), pytest.param(1, ["a/app-0"], id="down after")],
)
def test_prometheus_not_answering_a_wave_gate_pauses_the_run_and_resume_judges_it_again(
    answers: int, restarted: list[str]
) -> None:
    """Prometheus down (after the retries) is not a failed gate: the run ends Paused in RestartingDataPlane
    (not Failed, so onFailure never runs), the reason names the wave, Prometheus and the error, ``run-paused``
    is sent with them; resumed with Prometheus back, the wave is judged and the run ends Done."""
    from upgrader.notifications import events_for  # noqa: PLC0415

    spec = _spec(waves=[{"name": "canary", "namespaces": ["a"]}, {"name": "rest", "namespaces": ["*"]}])
    cluster, store = _cluster(a=1, b=1), MemoryStore()
    executor = _executor(cluster, _plan(spec, ["a", "b"]), store, spec=spec)
    metrics = _Unanswered(answers)
    executor.metrics = metrics
    sent: list[dict[str, object]] = []
    executor.on_transition = lambda change, notices: sent.extend(
        events_for(change, notices, plan_from=None, plan_to=None, installation={})
    )
    result = executor.run()
    assert (result.state, result.stopped_in) == (RunState.PAUSED, RunState.RESTARTING_DATA_PLANE)
    assert result.next_command == "upgrader resume run-1"
    assert result.errors == [], "a pause is not an error"
    reason = result.events[-1].reason
    assert reason.startswith("wave canary: metric gates cannot judge the wave: Prometheus at http://prom:9090")
    assert "Connection refused" in reason
    assert [(e["kind"], e["reason"], e["next_command"]) for e in sent[-1:]] == [
        ("run-paused", reason, "upgrader resume run-1")
    ]
    assert _restarts(cluster) == restarted
    metrics.back = True
    assert executor.run().state == RunState.DONE
    assert _restarts(cluster) == ["a/app-0", "b/app-0"], "the canary restarted once, then the rest"


def test_a_run_paused_by_prometheus_exits_5_with_the_reason_and_the_resume_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``apply``/``resume`` ending Paused with ``upgrader resume RUN`` next (no window) exit 5, as a window pause."""
    import typer  # noqa: PLC0415

    from upgrader.checkpoints import Event  # noqa: PLC0415
    from upgrader.cli.run import _print_result  # noqa: PLC0415
    from upgrader.errors import EXIT_PAUSED  # noqa: PLC0415

    cp = Checkpoint.new("run-9", {}, NOW)
    cp.state = RunState.PAUSED
    cp.next_command = "upgrader resume run-9"
    cp.events.append(Event(at=NOW, state=RunState.PAUSED, reason="wave canary: metric gates cannot judge the wave"))
    with pytest.raises(typer.Exit) as info:
        _print_result(cp)
    assert info.value.exit_code == EXIT_PAUSED
    out = capsys.readouterr().out
    assert "paused: wave canary: metric gates cannot judge the wave" in out
    assert "next: upgrader resume run-9" in out


def test_workloads_started_together_are_recorded_in_one_checkpoint_write_before_their_patches() -> None:
    """Five free slots, five workloads: one fenced save for the batch instead of one per workload (and one
    lock check, the save's fence), and every restarted workload is in the checkpoint."""

    def saves_for(per_namespace: int) -> int:
        spec = _spec(maxConcurrentPerNamespace=per_namespace)
        cluster, store = _cluster(a=5), MemoryStore()
        result = _executor(cluster, _plan(spec, ["a"]), store, spec=spec).run()
        assert result.state == RunState.DONE
        assert sorted(f"{r.namespace}/{r.name}" for r in result.restarted) == sorted(_restarts(cluster))
        return store.saves

    one_by_one, together = saves_for(1), saves_for(5)
    assert one_by_one - together == 4, (one_by_one, together)


class _Lease:
    """LockPort in memory: ours until another run takes it; can fail like an unreachable API."""

    def __init__(self) -> None:
        self.taken, self.unreachable = False, False

    def renew(self, now: dt.datetime) -> None:
        if self.taken:
            raise lost_error("linkerd/upgrader-lock-linkerd", "me@host:1/run-1", "bob@laptop:2/run-b")
        if self.unreachable:
            raise UpgraderError("cannot renew the lock: the Kubernetes API did not answer")

    def check(self) -> None:
        if self.taken:
            raise lost_error("linkerd/upgrader-lock-linkerd", "me@host:1/run-1", "bob@laptop:2/run-b")


@pytest.mark.parametrize(
    ("when", "patched"),
    [("after the batch's save", 0), ("after the second patch", 2)],
    ids=["the heartbeat finds the lock lost after the batch's save: no patch", "lost after two patches: two"],
)
def test_a_lock_the_heartbeat_finds_lost_mid_batch_stops_the_next_patch(when: str, patched: int) -> None:
    """One fenced save for five restarts, then a local check before each patch: a loss the heartbeat's background
    renewal found stops the batch at the next patch, with the lost-lock error naming the new holder."""
    spec = _spec(maxConcurrentPerNamespace=5)
    lease = _Lease()

    def lose() -> None:  # what the heartbeat's thread does when its renewal finds the Lease taken
        lease.taken = True
        cluster.now += dt.timedelta(seconds=heartbeat.due_in())
        heartbeat.tick()

    class Store(MemoryStore):
        def store(self, *, checkpoint: Checkpoint) -> None:
            super().store(checkpoint=checkpoint)
            if when == "after the batch's save" and checkpoint.restarted and not lease.taken:
                lose()

    class Cluster(FakeCluster):
        def restart(self, workload: Workload, annotations: Mapping[str, str | None]) -> None:
            super().restart(workload, annotations)
            if when == "after the second patch" and len(_restarts(self)) == 2:
                lose()

    cluster, store = Cluster(), Store()
    cluster.workload_list, cluster.pod_versions = [], {}
    for i in range(5):
        cluster.add("Deployment", "a", f"app-{i}")
    heartbeat = Heartbeat(lease, lambda: cluster.now, interval=20, lease_seconds=60)
    executor = _executor(cluster, _plan(spec, ["a"]), store, spec=spec)
    executor.lock = heartbeat
    with pytest.raises(LockLostError, match="lock lost to bob@laptop:2/run-b"):
        executor.run()
    assert len(_restarts(cluster)) == patched
    saved = store.fetch(run_id="run-1")
    assert saved is not None
    assert len(saved.restarted) == 5, "the batch was recorded in its one save, before any patch"


@pytest.mark.parametrize(
    ("unreachable", "patched"),
    [(True, 0), (False, 5)],
    ids=["the lease ran out and cannot be renewed: no patch", "the lease ran out but nobody took it: renewed, all"],
)
def test_a_lease_not_renewed_for_longer_than_its_duration_is_checked_before_the_next_patch(
    unreachable: bool, patched: int
) -> None:
    """No renewal for longer than the lease: the next patch first fences (renewing); an API that does not answer
    stops the batch with the expired-lock error, a renewal that goes through lets it go on."""
    spec = _spec(maxConcurrentPerNamespace=5)
    lease, stalled = _Lease(), []

    class Store(MemoryStore):
        def store(self, *, checkpoint: Checkpoint) -> None:
            super().store(checkpoint=checkpoint)
            if checkpoint.restarted and not stalled:  # the batch's save: then the heartbeat stalls past the lease
                stalled.append(True)
                lease.unreachable = unreachable
                cluster.now += dt.timedelta(seconds=61)

    cluster, store = _cluster(a=5), Store()
    heartbeat = Heartbeat(lease, lambda: cluster.now, interval=20, lease_seconds=60)
    executor = _executor(cluster, _plan(spec, ["a"]), store, spec=spec)
    executor.lock = heartbeat
    if unreachable:
        with pytest.raises(LockLostError, match="could not renew it for 61s"):
            executor.run()
    else:
        assert executor.run().state == RunState.DONE
    assert len(_restarts(cluster)) == patched
