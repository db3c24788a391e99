"""Running a rollout (upgrader.fleet): stage order, maxConcurrent, a failed or paused cluster, bake, resume.

Each cluster's run is a child process; here the child is a stand-in for ``python -m upgrader`` (the
command line is our own boundary) that records how it was called, writes its run's checkpoint into a
file store standing for the cluster's state store, and exits as the test says.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from upgrader import fleet
from upgrader.checkpoints import Checkpoint, CheckpointStore, FileStore
from upgrader.errors import ApiError, ClusterUnreachableError, InputError
from upgrader.rollout import ClusterState, RolloutState, StageState, load_rollout, new_record, resolve
from upgrader.spec import load_spec
from upgrader.states import RunState

FAKE = """#!{python}
import json, os, sys, time, datetime as dt
from pathlib import Path
sys.path.insert(0, {repo!r})
from upgrader.checkpoints import Checkpoint, CheckpointStore, FileStore
from upgrader.states import RunState
args = sys.argv[3:]
root = Path({root!r})
context = args[args.index("--context") + 1]
command = [a for a in args if a in ("apply", "resume")][0]
script = json.loads((root / "script.json").read_text()).get(context, {{}})
with (root / "calls.log").open("a") as out:
    out.write(json.dumps({{"context": context, "command": command, "args": args, "start": time.time()}}) + "\\n")
time.sleep(script.get("sleep", 0.05))
if script.get("window"):  # its own window check refuses to start it: the event, the error, exit 3, nothing stored
    print(json.dumps({{"event": "window-refused", "reason": "no window is open now", "next": script["window"]}}))
    print("error: the run does not start now")
    sys.exit(3)
store = FileStore(root / "stores" / context)
if command == "apply":
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    plan = {{"from": "stable-2.13.7", "to": "stable-2.14.10", "hops": [{{"waves": [{{"namespaces": ["shop"]}}]}}]}}
    cp = Checkpoint.new(args[args.index("--run-id") + 1], plan, later)
else:
    cp = store.fetch(run_id=args[args.index("resume") + 1])
cp.state = RunState(script.get("state", "Done"))
store.store(checkpoint=cp)
with (root / "calls.log").open("a") as out:
    out.write(json.dumps({{"context": context, "end": time.time()}}) + "\\n")
sys.exit(script.get("exit", 0))
"""

REPO = str(Path(__file__).parent.parent)


def _fake(tmp_path: Path, script: dict[str, dict[str, Any]]) -> str:
    path = tmp_path / "fake-upgrader"
    path.write_text(FAKE.format(python=sys.executable, repo=REPO, root=str(tmp_path)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "script.json").write_text(json.dumps(script))
    return str(path)


def _calls(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


class Clock:
    """Time that moves only when the rollout sleeps (bakes and polls never wait for real)."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
        self.slept = 0.0

    def __call__(self) -> dt.datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        import time  # noqa: PLC0415

        self.slept += seconds
        self.now += dt.timedelta(seconds=seconds)
        time.sleep(0.01)


def _setup(
    tmp_path: Path, stages: str, script: dict[str, dict[str, Any]], contexts: list[str]
) -> tuple[fleet.Fleet, Any, Any, Clock]:
    spec = tmp_path / "rollout.yaml"
    spec.write_text(f"kind: RolloutSpec\nname: r\ntarget: stable-2.14.10\nstages:\n{stages}")
    rollout = load_rollout(spec, load_spec)
    resolved = resolve(rollout, contexts)
    clock = Clock()
    runner = fleet.Fleet(
        kubeconfig=None,
        helm="helm",
        repo="linkerd",
        state_namespace="linkerd",
        files=fleet.RecordFiles(tmp_path / "rollouts"),
        clock=clock,
        sleep=clock.sleep,
        python=_fake(tmp_path, script),
    )
    for c in contexts:  # each cluster's state store
        runner._stores[c] = FileStore(tmp_path / "stores" / c)
    return runner, rollout, resolved, clock


def _start(runner: fleet.Fleet, rollout: Any, stages: Any) -> Any:
    return fleet.start(runner, rollout, stages, fleet.RolloutPlan(rollout, stages))


def test_stages_run_in_order_and_at_most_max_concurrent_at_once(tmp_path: Path) -> None:
    """Stage one's two clusters run side by side (maxConcurrent 2) and end before stage two's cluster starts."""
    stages = (
        "  - name: one\n    maxConcurrent: 2\n    clusters: [{match: 'x*'}]\n"
        "  - name: two\n    bakeTime: 10m\n    clusters: [{context: y}]\n"
    )
    runner, rollout, resolved, clock = _setup(
        tmp_path, stages, {"x1": {"sleep": 0.5}, "x2": {"sleep": 0.5}}, ["x1", "x2", "y"]
    )
    record = _start(runner, rollout, resolved)
    assert record.state is RolloutState.DONE
    assert {c.context: c.state for c in record.clusters.values()} == dict.fromkeys(("x1", "x2", "y"), ClusterState.DONE)
    calls = _calls(tmp_path)
    starts = {c["context"]: c["start"] for c in calls if "start" in c}
    ends = {c["context"]: c["end"] for c in calls if "end" in c}
    assert max(starts["x1"], starts["x2"]) < min(ends["x1"], ends["x2"]), "stage one's clusters ran side by side"
    assert starts["y"] > max(ends["x1"], ends["x2"]), "stage two started after stage one ended"
    assert clock.slept >= 600, "stage two baked for its bakeTime"
    first = next(c for c in calls if c.get("context") == "y" and "args" in c)["args"]
    assert first[:2] == ["--log-format", "json"]
    assert first[2:5] == ["apply", "--to", "stable-2.14.10"]
    assert first[first.index("--run-id") + 1] == record.clusters["y"].run_id
    assert first[first.index("--context") + 1] == "y"
    assert first[first.index("--state-store") + 1] == "kubernetes:linkerd"


def test_max_concurrent_one_runs_the_stage_one_by_one(tmp_path: Path) -> None:
    """The default maxConcurrent (1): the second cluster starts after the first ended."""
    runner, rollout, resolved, _ = _setup(tmp_path, "  - name: one\n    clusters: [{match: 'x*'}]\n", {}, ["x1", "x2"])
    assert _start(runner, rollout, resolved).state is RolloutState.DONE
    calls = _calls(tmp_path)
    end_x1 = next(c["end"] for c in calls if c.get("context") == "x1" and "end" in c)
    start_x2 = next(c["start"] for c in calls if c.get("context") == "x2" and "start" in c)
    assert start_x2 > end_x1


def test_a_failed_cluster_stops_later_stages_and_names_its_commands(tmp_path: Path) -> None:
    """x fails (its run Failed, exit 1): y of the next stage never runs; x's own resume and rollback are named."""
    stages = "  - name: one\n    clusters: [{context: x}]\n  - name: two\n    clusters: [{context: y}]\n"
    runner, rollout, resolved, _ = _setup(tmp_path, stages, {"x": {"state": "Failed", "exit": 1}}, ["x", "y"])
    record = _start(runner, rollout, resolved)
    assert record.state is RolloutState.FAILED
    assert fleet.exit_code(record) == 1
    assert [s.state for s in record.stages] == [StageState.FAILED, StageState.PENDING]
    assert record.clusters["y"].state is ClusterState.PENDING
    assert {c["context"] for c in _calls(tmp_path)} == {"x"}
    run_id = record.clusters["x"].run_id
    assert run_id == fleet.run_id_for(record, "x")
    assert run_id.startswith("r-1201020000-")
    commands = record.clusters["x"].next_commands
    assert commands[0].startswith(f"upgrader resume {run_id} --context x --state-store kubernetes:linkerd")
    assert commands[1].startswith(f"upgrader rollback {run_id} --context x")
    assert "later stages not started: two" in record.reason


def test_a_paused_cluster_pauses_the_rollout_with_exit_5(tmp_path: Path) -> None:
    """A run paused by its window (exit 5, checkpoint Paused) pauses the rollout."""
    runner, rollout, resolved, _ = _setup(
        tmp_path, "  - name: one\n    clusters: [{context: x}]\n", {"x": {"state": "Paused", "exit": 5}}, ["x"]
    )
    record = _start(runner, rollout, resolved)
    assert record.state is RolloutState.PAUSED
    assert fleet.exit_code(record) == 5


def test_a_run_its_own_window_refused_to_start_pauses_the_rollout_with_the_next_opening(tmp_path: Path) -> None:
    """A cluster's run refused at start by its window check (exit 3, no checkpoint) pauses the rollout (exit 5)
    with the reason and the next opening, and only the rollout's resume is offered; it is not Failed."""
    opens = "the next window opens Sat 01:00 UTC"
    runner, rollout, resolved, _ = _setup(
        tmp_path,
        "  - name: one\n    clusters: [{context: x}]\n  - name: two\n    clusters: [{context: y}]\n",
        {"x": {"window": opens}},
        ["x", "y"],
    )
    record = _start(runner, rollout, resolved)
    assert record.state is RolloutState.PAUSED
    assert fleet.exit_code(record) == 5
    x = record.clusters["x"]
    assert x.state is ClusterState.PAUSED
    assert x.reason == f"outside its maintenance window (no window is open now; {opens})"
    assert x.next_commands == [f"upgrader rollout resume {record.spec_path}"]
    assert opens in record.reason
    assert [c["context"] for c in _calls(tmp_path) if "command" in c] == ["x"]  # stage two never started


def test_resume_resumes_a_killed_run_from_its_checkpoint_and_leaves_done_clusters_alone(tmp_path: Path) -> None:
    """After a kill: x (Done) is left alone, y's run (killed in UpgradingControlPlane, its process gone) is resumed
    with `resume RUN --take-over-lock`, z (never started) is applied."""
    stages = "  - name: one\n    clusters: [{context: x}, {context: y}]\n  - name: two\n    clusters: [{context: z}]\n"
    runner, rollout, resolved, clock = _setup(tmp_path, stages, {}, ["x", "y", "z"])
    record = new_record(
        rollout,
        resolved,
        kubeconfig=None,
        state_store="kubernetes:linkerd",
        now=clock(),
        skipped={},
        target="stable-2.14.10",
    )
    record.clusters["x"].state = ClusterState.DONE
    y = record.clusters["y"]
    y.state, y.pid, y.host, y.launched_at, y.launches = ClusterState.RUNNING, 2**22 + 7, os.uname().nodename, clock(), 1
    killed = Checkpoint.new("run-y", {"from": "stable-2.13.7", "to": "stable-2.14.10", "hops": []}, clock())
    killed.state = RunState.UPGRADING_CONTROL_PLANE
    FileStore(tmp_path / "stores" / "y").store(checkpoint=killed)
    runner.files.store(record, clock())

    done = fleet.resume(runner, rollout, resolved)
    assert done.state is RolloutState.DONE
    calls = [c for c in _calls(tmp_path) if "args" in c]
    assert [(c["context"], c["command"]) for c in calls] == [("y", "resume"), ("z", "apply")]
    assert calls[0]["args"][2:6] == ["resume", "run-y", "--take-over-lock", "--own-lock-only"]
    assert done.clusters["y"].launches == 2
    assert done.clusters["y"].run_id == "run-y"


def test_a_finished_rollout_can_start_again_but_an_unfinished_one_is_resumed(tmp_path: Path) -> None:
    """`rollout apply` of a rollout already under way is refused (exit 3) pointing at `rollout resume`."""
    runner, rollout, resolved, _ = _setup(
        tmp_path, "  - name: one\n    clusters: [{context: x}]\n", {"x": {"state": "Failed", "exit": 1}}, ["x"]
    )
    _start(runner, rollout, resolved)
    with pytest.raises(fleet.RolloutRefusedError) as caught:
        _start(runner, rollout, resolved)
    assert caught.value.exit_code == 3
    assert "rollout resume" in caught.value.hint


def test_skipped_clusters_are_never_launched(tmp_path: Path) -> None:
    """skip: true: the cluster is recorded Skipped and no run of it starts."""
    runner, rollout, resolved, _ = _setup(
        tmp_path, "  - name: one\n    clusters: [{context: x}, {context: y, skip: true}]\n", {}, ["x", "y"]
    )
    plan = fleet.RolloutPlan(rollout, resolved)
    plan.clusters["y"] = fleet.ClusterPlan(resolved[0].members[1], None, "skip: true in the rollout spec")
    record = fleet.start(runner, rollout, resolved, plan)
    assert record.clusters["y"].state is ClusterState.SKIPPED
    assert {c["context"] for c in _calls(tmp_path)} == {"x"}


class FakeJobs:
    """An in-memory stand-in for our JobAdapter: the Job's pod "runs" by writing its run's checkpoint."""

    def __init__(self, store: CheckpointStore, clock: Clock, end: str = "Done") -> None:
        self.store, self.clock, self.end = store, clock, end
        self.secrets: dict[str, dict[str, str]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}

    def put_secret(self, namespace: str, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
        self.secrets[f"{namespace}/{name}"] = data

    def create_job(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        self.jobs[f"{meta['namespace']}/{meta['name']}"] = manifest
        run_id = meta["annotations"]["upgrader.io/run-id"]
        checkpoint = Checkpoint.new(run_id, {"from": "stable-2.13.7", "to": "stable-2.14.10", "hops": []}, self.clock())
        checkpoint.state = RunState(self.end)
        self.store.store(checkpoint=checkpoint)

    def job(self, namespace: str, name: str) -> Any:
        from upgrader.rollout import JobView  # noqa: PLC0415

        return JobView(1, 0, 0, None) if f"{namespace}/{name}" in self.jobs else None


def test_in_cluster_runs_each_cluster_as_a_job_and_follows_its_checkpoint(tmp_path: Path) -> None:
    """--in-cluster: the cluster's spec goes into a Secret, the Job is job_manifest()'s with the run named up front,
    and the rollout follows the run through the cluster's state store (the Job's namespace)."""
    (tmp_path / "up.yaml").write_text("name: up\nwaivers: [kubernetes-version]\n")
    stages = "  - name: one\n    clusters: [{context: x, spec: up.yaml}]\n"
    runner, rollout, resolved, clock = _setup(tmp_path, stages, {}, ["x"])
    runner.in_cluster = fleet.InCluster("registry.example/upgrader@sha256:" + "0" * 64, "upgrader", "upgrader")
    runner.state_namespace = "upgrader"
    fake = FakeJobs(runner._stores["x"], clock)
    runner._jobs["x"] = fake
    record = _start(runner, rollout, resolved)
    assert record.state is RolloutState.DONE
    assert record.in_cluster is not None
    assert record.in_cluster["image"].startswith("registry.example/")
    cluster = record.clusters["x"]
    assert cluster.job == f"{cluster.run_id}-1"
    job = fake.jobs[f"upgrader/{cluster.job}"]
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "upgrader"
    args = next(c for c in pod["containers"] if c["name"] == "upgrader")["args"]
    assert args[args.index("--run-id") + 1] == cluster.run_id
    assert args[args.index("--state-store") + 1] == "kubernetes:upgrader"
    assert "kubernetes-version" in fake.secrets[f"upgrader/{cluster.job}-spec"]["spec.yaml"]
    assert not _calls(tmp_path), "no local process was started"


def test_a_launch_is_recorded_before_its_process_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record says Running with the run id and launch time before the child starts, and its pid after."""
    runner, rollout, resolved, _clock = _setup(tmp_path, "  - name: one\n    clusters: [{context: x}]\n", {}, ["x"])
    seen: list[dict[str, Any]] = []
    real = fleet.subprocess.Popen

    def popen(*args: Any, **kw: Any) -> Any:
        seen.append(json.loads(runner.files.path("r").read_text())["clusters"]["x"])
        return real(*args, **kw)

    monkeypatch.setattr(fleet.subprocess, "Popen", popen)
    record = _start(runner, rollout, resolved)
    assert record.state is RolloutState.DONE
    [before] = seen
    assert (before["state"], before["pid"], before["launches"]) == ("Running", None, 1)
    assert before["run_id"] == record.clusters["x"].run_id
    assert before["launched_at"]


def test_resume_refuses_when_the_stages_resolve_to_other_clusters_than_it_started_with(tmp_path: Path) -> None:
    """A selector that matches other contexts today (a changed kubeconfig) is bad input naming the difference."""
    stages = "  - name: one\n    clusters: [{context: x}]\n  - name: two\n    clusters: [{match: 'prod-*'}]\n"
    script = {"x": {"state": "Paused", "exit": 5}}
    runner, rollout, resolved, _clock = _setup(tmp_path, stages, script, ["x", "prod-a", "prod-b"])
    assert _start(runner, rollout, resolved).state is RolloutState.PAUSED
    with pytest.raises(InputError) as refused:
        fleet.resume(runner, rollout, resolve(rollout, ["x", "prod-a", "prod-c"]))
    assert refused.value.exit_code == 2
    assert "stage two now also matches prod-c" in refused.value.message
    assert "stage two no longer matches prod-b" in refused.value.message
    assert not [c for c in _calls(tmp_path) if c.get("context") == "prod-c"]


class Unreadable(FakeJobs):
    """A Job adapter whose reads fail the way our adapters fail (an error of ours, not a crash)."""

    def __init__(self, store: CheckpointStore, clock: Clock, error: Exception) -> None:
        super().__init__(store, clock)
        self.error = error

    def create_job(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        self.jobs[f"{meta['namespace']}/{meta['name']}"] = manifest

    def job(self, namespace: str, name: str) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "state", "rollout_state"),
    [
        (ClusterUnreachableError("cluster x did not answer", hint="check the network"), "Paused", "Paused"),
        (ApiError("the API refused: 403", hint="grant get jobs"), "Failed", "Failed"),
    ],
)
def test_an_error_reading_one_cluster_stops_that_cluster_not_the_driver(
    tmp_path: Path, error: Exception, state: str, rollout_state: str
) -> None:
    """The record ends Paused/Failed naming the cluster, the error and its hint, never left Running."""
    runner, rollout, resolved, clock = _setup(tmp_path, "  - name: one\n    clusters: [{context: x}]\n", {}, ["x"])
    runner.in_cluster = fleet.InCluster("registry.example/upgrader@sha256:" + "0" * 64, "upgrader", "upgrader")
    runner._jobs["x"] = Unreadable(runner._stores["x"], clock, error)
    record = _start(runner, rollout, resolved)
    stored = json.loads(runner.files.path("r").read_text())
    assert (stored["state"], stored["clusters"]["x"]["state"]) == (rollout_state, state)
    assert str(error) in stored["clusters"]["x"]["reason"] or error.args[0] in stored["clusters"]["x"]["reason"]
    assert "upgrader rollout resume" in stored["clusters"]["x"]["next_commands"][-1]
    assert record.state == RolloutState(rollout_state)


class CompletedAtOnce(FakeJobs):
    """A Job Kubernetes marks Complete at once (KWOK's pods succeed without running): no checkpoint of its run."""

    def create_job(self, manifest: dict[str, Any]) -> None:
        meta = manifest["metadata"]
        self.jobs[f"{meta['namespace']}/{meta['name']}"] = manifest

    def job(self, namespace: str, name: str) -> Any:
        from upgrader.rollout import JobView  # noqa: PLC0415

        return JobView(0, 1, 0, "Complete") if f"{namespace}/{name}" in self.jobs else None


@pytest.mark.parametrize(("at_target", "state"), [(False, ClusterState.FAILED), (True, ClusterState.DONE)])
def test_a_job_that_completes_without_a_checkpoint_is_done_only_when_the_cluster_is_at_the_target(
    tmp_path: Path, at_target: bool, state: ClusterState
) -> None:
    stages = "  - name: one\n    clusters: [{context: x}]\n"
    runner, rollout, resolved, clock = _setup(tmp_path, stages, {}, ["x"])
    runner.in_cluster = fleet.InCluster("registry.example/upgrader@sha256:" + "0" * 64, "upgrader", "upgrader")
    runner._jobs["x"] = CompletedAtOnce(runner._stores["x"], clock)
    asked: list[tuple[str, str]] = []
    runner.at_target = lambda context, _spec, target: asked.append((context, target)) is None and at_target
    record = _start(runner, rollout, resolved)
    cluster = record.clusters["x"]
    assert asked == [("x", "stable-2.14.10")]
    assert cluster.state is state
    if at_target:
        assert "already at stable-2.14.10" in cluster.reason
    else:
        assert record.state is RolloutState.FAILED
        assert "left no checkpoint" in cluster.reason
        assert cluster.job in cluster.reason


def test_the_rollout_plan_shows_each_clusters_own_hops_in_stage_order(tmp_path: Path) -> None:
    """Clusters from different versions get their own hops; a refused cluster allowed to be skipped is shown skipped
    with its reason (json, markdown and table), and the rollout is not refused."""
    from upgrader.catalog import default_catalog  # noqa: PLC0415
    from upgrader.planning import Observed, build_offering, make_plan  # noqa: PLC0415
    from upgrader.spec import Spec  # noqa: PLC0415

    stages = (
        "  - name: canary\n    clusters: [{context: x}]\n"
        "  - name: rest\n    clusters: [{context: y}, {context: z, allowRefused: true}]\n"
    )
    _, rollout, resolved, _ = _setup(tmp_path, stages, {}, ["x", "y", "z"])
    cat = default_catalog()
    offering, _ = build_offering(cat, None)

    def plan(version: str) -> Any:
        return make_plan(Observed(cat.parse(version)), cat.parse("stable-2.14.10"), offering, cat, Spec())

    result = fleet.RolloutPlan(rollout, resolved)
    members = {m.context: m for s in resolved for m in s.members}
    result.clusters["x"] = fleet.ClusterPlan(members["x"], plan("stable-2.13.7"))
    result.clusters["y"] = fleet.ClusterPlan(members["y"], plan("stable-2.12.6"))
    refused = plan("stable-2.10.2")  # three majors back from the target's: refused without its acknowledgement
    assert refused.refused is not None
    result.clusters["z"] = fleet.ClusterPlan(members["z"], refused, f"plan refused ({refused.refused.code})")
    doc = json.loads(fleet.render_plan(result, "json"))
    assert doc["refused"] is None
    assert [s["name"] for s in doc["stages"]] == ["canary", "rest"]
    hops = {c["context"]: c["hops"] for s in doc["stages"] for c in s["clusters"]}
    assert hops["x"] == ["stable-2.14.10"]
    assert hops["y"] == ["stable-2.13.7", "stable-2.14.10"]
    assert doc["stages"][1]["clusters"][1]["skipped"].startswith("plan refused")
    markdown = fleet.render_plan(result, "markdown")
    assert "| x | stable-2.13.7 | stable-2.13.7 -> stable-2.14.10 |" in markdown
    assert "### cluster y" in markdown
    table = fleet.render_plan(result, "table")
    assert table.index("stage 1 canary") < table.index("stage 2 rest")
    assert "  z: -; 0 min; skipped: plan refused" in table


def test_the_job_launcher_asks_only_for_what_the_readme_lists() -> None:
    """upgrader/adapters/jobs.py (left out of the run's permission table): the operator creates the spec Secret and
    the Job and reads the Job's status, nothing more."""
    import ast  # noqa: PLC0415

    source = Path(fleet.__file__).parent / "adapters" / "jobs.py"
    called = {
        node.func.attr
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and "namespaced" in node.func.attr
    }
    assert called == {
        "create_namespaced_secret",
        "replace_namespaced_secret",
        "create_namespaced_job",
        "read_namespaced_job_status",
    }


def test_metric_gates_after_the_bake_stop_the_rollout_when_the_last_wave_fails_them(tmp_path: Path) -> None:
    """gates.metricsAfterBake: after stage one's bake, x's last wave (shop) is judged with x's spec's gates; a success
    rate below minSuccessRate fails the stage and stage two never starts. Prometheus not answering pauses instead."""
    from upgrader.metrics import MetricsUnavailableError, Sample  # noqa: PLC0415

    (tmp_path / "up.yaml").write_text(
        "name: up\ngates:\n  prometheusUrl: http://prometheus:9090\n  metricsWindow: 1m\n"
    )
    stages = (
        "  - name: one\n    bakeTime: 5m\n    gates: {metricsAfterBake: true}\n"
        "    clusters: [{context: x, spec: up.yaml}]\n"
        "  - name: two\n    clusters: [{context: y}]\n"
    )
    runner, rollout, resolved, clock = _setup(tmp_path, stages, {}, ["x", "y"])
    asked: list[tuple[str, str, int]] = []

    class Port:
        def __init__(self, url: str, rate: float | None) -> None:
            self.url, self.rate = url, rate

        def sample(self, namespace: str, window_seconds: int) -> Sample:
            asked.append((self.url, namespace, window_seconds))
            if self.rate is None:
                raise MetricsUnavailableError("Prometheus did not answer")
            return Sample(namespace, self.rate, 10.0, 5.0)

    runner.metrics = lambda url: Port(url, 0.5)
    record = _start(runner, rollout, resolved)
    assert asked == [("http://prometheus:9090", "shop", 60)]
    assert clock.slept >= 300, "judged after the bake"
    assert record.state is RolloutState.FAILED
    assert [s.state for s in record.stages] == [StageState.FAILED, StageState.PENDING]
    assert "metric gates after the bake: x: shop: success rate" in record.reason
    assert record.clusters["y"].state is ClusterState.PENDING

    runner.metrics = lambda url: Port(url, None)
    paused = fleet.resume(runner, rollout, resolved)
    assert paused.state is RolloutState.PAUSED
    assert fleet.exit_code(paused) == 5

    runner.metrics = lambda url: Port(url, 1.0)
    done = fleet.resume(runner, rollout, resolved)
    assert done.state is RolloutState.DONE
    assert len([c for c in _calls(tmp_path) if c.get("context") == "x" and "args" in c]) == 1, "x ran once"


def test_resume_and_status_reopen_the_rollout_with_its_own_kubeconfig_and_state_store(tmp_path: Path) -> None:
    """Without --kubeconfig, a started rollout's contexts, clusters' state store and Job settings are its record's."""
    kubeconfig = tmp_path / "fleet.kubeconfig"
    kubeconfig.write_text("contexts:\n  - name: x\n  - name: y\n")
    runner, rollout, resolved, _ = _setup(tmp_path, "  - name: one\n    clusters: [{match: '*'}]\n", {}, ["x", "y"])
    runner.kubeconfig, runner.state_namespace = kubeconfig, "checkpoints"
    _start(runner, rollout, resolved)

    again = fleet.Fleet(kubeconfig=None, helm="helm", repo="linkerd", state_namespace="linkerd", files=runner.files)
    record, stages = fleet.reopened(again, rollout, None)
    assert again.kubeconfig == kubeconfig
    assert again.state_store == "kubernetes:checkpoints"
    assert again.in_cluster is None
    assert [m.context for m in stages[0].members] == ["x", "y"]
    assert record.state is RolloutState.DONE


def test_the_record_holds_absolute_paths_and_the_helm_options_so_resume_works_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started from the spec's folder with relative paths, --helm and --repo: the record's spec paths are absolute
    and its helm binary and repository are what a resume from elsewhere uses unless it is given others."""
    (tmp_path / "up.yaml").write_text("name: up\n")
    stages = "  - name: one\n    clusters: [{context: x, spec: up.yaml}]\n"
    runner, _rollout, _resolved, _ = _setup(tmp_path, stages, {}, ["x"])
    monkeypatch.chdir(tmp_path)
    rollout = load_rollout(Path("rollout.yaml"), load_spec)
    runner.helm, runner.repo = "/opt/helm4/helm", "mirror"
    _start(runner, rollout, resolve(rollout, ["x"]))
    calls = [c for c in _calls(tmp_path) if "args" in c]
    assert calls[0]["args"][calls[0]["args"].index("--spec") + 1] == str(tmp_path / "up.yaml")
    monkeypatch.chdir("/")
    record = runner.files.fetch("r")
    assert record is not None
    assert record.spec_path == str(tmp_path / "rollout.yaml")
    assert record.clusters["x"].spec == str(tmp_path / "up.yaml")
    assert (record.helm, record.repo) == ("/opt/helm4/helm", "mirror")
    again = fleet.Fleet(kubeconfig=None, helm="helm", repo="linkerd", state_namespace="linkerd", files=runner.files)
    with pytest.raises(InputError):  # no such kubeconfig: the stages cannot be resolved, the options are set first
        fleet.reopened(again, rollout, tmp_path / "missing")
    assert (again.helm, again.repo) == ("/opt/helm4/helm", "mirror")
    given = fleet.Fleet(kubeconfig=None, helm="helm", repo="linkerd", state_namespace="linkerd", files=runner.files)
    with pytest.raises(InputError):
        fleet.reopened(given, rollout, tmp_path / "missing", helm="helm3", repo="other")
    assert (given.helm, given.repo) == ("helm3", "other")
