"""Rollout specs (kind: RolloutSpec): parsing, stage order, skip rules and the decisions of a (resumed) rollout."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from upgrader.errors import InputError
from upgrader.metrics import Sample
from upgrader.rollout import (
    Action,
    ClusterRecord,
    ClusterState,
    JobView,
    Member,
    StageState,
    job_exit,
    last_wave_namespaces,
    load_rollout,
    metric_gate_failures,
    next_action,
    outside_window,
    resolve,
    run_state_of,
    skip_reason,
    stage_outcome,
    window_refusal,
)
from upgrader.spec import Gates, Spec, load_spec
from upgrader.windows import REFUSED_EVENT

EXAMPLE = Path(__file__).parent.parent / "plans" / "rollouts" / "fleet.yaml"
CONTEXTS = ["staging", "prod-eu-1", "prod-eu-2", "prod-us-1", "prod-ap-1", "prod-us-legacy", "dev"]


def _write(folder: Path, text: str, name: str = "rollout.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


HEAD = "apiVersion: upgrader.io/v1alpha1\nkind: RolloutSpec\nname: r\ntarget: stable-2.14.10\n"


def test_the_example_loads_and_resolves_in_stage_order() -> None:
    """plans/rollouts/fleet.yaml: staging, then prod-eu-* (2 at once, metric gates), then the rest; legacy skipped."""
    rollout = load_rollout(EXAMPLE, load_spec)
    stages = resolve(rollout, CONTEXTS)
    assert [s.name for s in stages] == ["canary", "europe", "rest"]
    assert [[m.context for m in s.members] for s in stages] == [
        ["staging"],
        ["prod-eu-1", "prod-eu-2"],
        ["prod-us-1", "prod-ap-1", "prod-us-legacy"],
    ]
    canary, europe, rest = stages
    assert canary.members[0].spec_path is None
    assert europe.max_concurrent == 2
    assert europe.bake_seconds == 3600
    assert europe.metrics_after_bake
    assert {m.spec_path.name for m in europe.members if m.spec_path} == {"staged-rollout.yaml"}
    assert [(m.context, m.skip, m.allow_refused) for m in rest.members] == [
        ("prod-us-1", False, True),
        ("prod-ap-1", False, True),
        ("prod-us-legacy", True, False),
    ]
    assert "dev" not in {m.context for s in stages for m in s.members}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("stages: []\n", "stages", id="a rollout with no stage is refused"),
        pytest.param("stages:\n  - name: a\n    clusters: []\n", "clusters", id="a stage with no cluster is refused"),
        pytest.param(
            "stages:\n  - name: a\n    clusters:\n      - context: x\n        match: 'y*'\n",
            "exactly one of context",
            id="an entry with a name and a selector is refused",
        ),
        pytest.param(
            "stages:\n  - name: a\n    clusters:\n      - regex: '('\n",
            "not a regular expression",
            id="a regex that does not compile is refused",
        ),
        pytest.param(
            "stages:\n  - name: a\n    clusters: [{context: x}]\n  - name: a\n    clusters: [{context: y}]\n",
            "unique",
            id="two stages of one name are refused",
        ),
        pytest.param(
            "stages:\n  - name: a\n    bakeTime: 5 minutes\n    clusters: [{context: x}]\n",
            "bakeTime",
            id="a bake time that is not a duration is refused",
        ),
        pytest.param(
            "stages:\n  - name: a\n    maxConcurrent: 0\n    clusters: [{context: x}]\n",
            "maxConcurrent",
            id="maxConcurrent below 1 is refused",
        ),
        pytest.param(
            "stages:\n  - name: a\n    clusters: [{context: x, waves: 2}]\n",
            "not a known field",
            id="an unknown field is refused",
        ),
        pytest.param(
            "stages:\n  - name: a\n    gates: {metricsAfterBake: true}\n    clusters: [{context: x}]\n",
            "no gates.prometheusUrl",
            id="metric gates after the bake without a Prometheus are refused",
        ),
    ],
)
def test_bad_rollout_specs_are_bad_input(tmp_path: Path, body: str, expected: str) -> None:
    """Each problem is an InputError (exit 2) naming what is wrong."""
    with pytest.raises(InputError) as caught:
        load_rollout(_write(tmp_path, HEAD + body), load_spec)
    assert caught.value.exit_code == 2
    assert expected in caught.value.message


def test_an_upgrade_spec_is_not_a_rollout_spec() -> None:
    """Giving an UpgradeSpec to `rollout` says which kind it is and where it belongs."""
    with pytest.raises(InputError) as caught:
        load_rollout(EXAMPLE.parent.parent / "staged-rollout.yaml", load_spec)
    assert "not a RolloutSpec" in caught.value.message


@pytest.mark.parametrize(
    ("upgrade", "expected"),
    [
        pytest.param("dryRun: true\n", "dryRun", id="a dry-run upgrade spec is refused (a rollout changes clusters)"),
        pytest.param("target: stable-2.13.7\n", "targets stable-2.13.7", id="an upgrade spec of another target"),
        pytest.param("waves: 1\n", "not a known field", id="an invalid upgrade spec is refused"),
    ],
)
def test_upgrade_specs_are_read_and_checked_with_the_rollout(tmp_path: Path, upgrade: str, expected: str) -> None:
    """Each upgrade spec the rollout names is validated when the rollout is loaded."""
    _write(tmp_path, "kind: UpgradeSpec\n" + upgrade, "up.yaml")
    body = "spec: up.yaml\nstages:\n  - name: a\n    clusters: [{context: x}]\n"
    with pytest.raises(InputError) as caught:
        load_rollout(_write(tmp_path, HEAD + body), load_spec)
    assert expected in caught.value.message


def test_specs_go_cluster_then_stage_then_rollout(tmp_path: Path) -> None:
    """A cluster's own spec wins over its stage's, which wins over the rollout's."""
    for name in ("all", "stage", "own"):
        _write(tmp_path, f"kind: UpgradeSpec\nname: {name}\n", f"{name}.yaml")
    body = (
        "spec: all.yaml\nstages:\n  - name: a\n    spec: stage.yaml\n    clusters:\n"
        "      - context: x\n      - context: y\n        spec: own.yaml\n  - name: b\n    clusters: [{context: z}]\n"
    )
    rollout = load_rollout(_write(tmp_path, HEAD + body), load_spec)
    members = {m.context: m for s in resolve(rollout, ["x", "y", "z"]) for m in s.members}
    assert {c: m.spec_path.name for c, m in members.items() if m.spec_path} == {
        "x": "stage.yaml",
        "y": "own.yaml",
        "z": "all.yaml",
    }
    assert set(rollout.upgrade_specs) == {str(tmp_path / f"{n}.yaml") for n in ("all", "stage", "own")}


@pytest.mark.parametrize(
    ("clusters", "expected"),
    [
        pytest.param("[{context: nope}]", "names no context", id="a named context the kubeconfig lacks"),
        pytest.param("[{match: 'qa-*'}]", "names no context", id="a selector that picks nothing"),
        pytest.param("[{match: 'prod-eu-*'}, {context: prod-eu-1}]", "again", id="a cluster listed twice"),
    ],
)
def test_resolving_refuses_what_cannot_be_meant(tmp_path: Path, clusters: str, expected: str) -> None:
    """Unknown contexts, empty selectors and clusters in two places are bad input, before anything runs."""
    rollout = load_rollout(_write(tmp_path, HEAD + f"stages:\n  - name: a\n    clusters: {clusters}\n"), load_spec)
    with pytest.raises(InputError) as caught:
        resolve(rollout, CONTEXTS)
    assert expected in caught.value.message


def test_selectors_keep_the_kubeconfig_order_and_regex_matches_whole_names(tmp_path: Path) -> None:
    """A regex must match the whole context name (prod-us-1, not prod-us-legacy-2 by prefix)."""
    body = "stages:\n  - name: a\n    clusters: [{regex: 'prod-(us|ap)-[0-9]'}]\n"
    rollout = load_rollout(_write(tmp_path, HEAD + body), load_spec)
    (stage,) = resolve(rollout, CONTEXTS)
    assert [m.context for m in stage.members] == ["prod-us-1", "prod-ap-1"]


M = Member("c", "s", None)


@pytest.mark.parametrize(
    ("member", "refused", "expected"),
    [
        pytest.param(M, None, (None, None), id="a planned cluster is neither skipped nor refusing"),
        pytest.param(Member("c", "s", None, skip=True), None, ("skip", None), id="skip: true skips it unplanned"),
        pytest.param(M, ("data-plane-skew", "x"), (None, "cluster c"), id="a refused cluster refuses the rollout"),
        pytest.param(
            Member("c", "s", None, allow_refused=True),
            ("data-plane-skew", "x"),
            ("allowRefused", None),
            id="allowRefused turns its refusal into a skip with the reason",
        ),
    ],
)
def test_skip_rules(member: Member, refused: tuple[str, str] | None, expected: tuple[str | None, str | None]) -> None:
    """Which cluster is skipped and which refusal stops the rollout."""
    skipped, refusal = skip_reason(member, refused)
    assert (skipped is None) == (expected[0] is None)
    assert (refusal is None) == (expected[1] is None)
    if expected[0]:
        assert expected[0] in (skipped or "")
    if expected[1]:
        assert expected[1] in (refusal or "")
        assert "data-plane-skew" in (refusal or "")


def _cluster(state: ClusterState, *, launches: int = 1) -> ClusterRecord:
    return ClusterRecord(context="c", stage="s", state=state, run_id="run-1", pid=42, launches=launches)


@pytest.mark.parametrize(
    ("state", "run_state", "alive", "action"),
    [
        pytest.param(ClusterState.DONE, "Failed", False, Action.LEAVE, id="a Done cluster is left alone"),
        pytest.param(ClusterState.SKIPPED, None, False, Action.LEAVE, id="a skipped cluster is left alone"),
        pytest.param(ClusterState.PENDING, None, False, Action.START, id="a pending cluster is started"),
        pytest.param(ClusterState.RUNNING, None, True, Action.FOLLOW, id="a run whose process lives is followed"),
        pytest.param(
            ClusterState.RUNNING,
            "UpgradingControlPlane",
            False,
            Action.RESUME,
            id="a killed run is resumed, not restarted",
        ),
        pytest.param(ClusterState.RUNNING, "Done", False, Action.MARK_DONE, id="a run that finished unwatched is Done"),
        pytest.param(ClusterState.RUNNING, None, False, Action.START, id="a launch that left no run is started again"),
        pytest.param(
            ClusterState.FAILED, "Failed", False, Action.RESUME, id="a failed run is resumed by rollout resume"
        ),
        pytest.param(ClusterState.PAUSED, "Paused", False, Action.RESUME, id="a paused run is resumed"),
        pytest.param(ClusterState.FAILED, "RolledBack", False, Action.STOP, id="a rolled-back run stops the rollout"),
    ],
)
def test_what_a_resumed_rollout_does_with_a_cluster(
    state: ClusterState, run_state: str | None, alive: bool, action: Action
) -> None:
    """next_action, from the record, the run's checkpoint state and whether its process lives."""
    assert next_action(_cluster(state), run_state, alive).action is action


def test_a_launch_recorded_without_its_process_id_is_never_started_blind() -> None:
    """The rollout records a launch (Running) before its process starts, then the pid: killed in between, a resumed
    rollout goes on from the run's checkpoint if there is one, and otherwise stops for an operator instead of
    starting a second process beside one that may still be starting."""
    launching = ClusterRecord(context="c", stage="s", state=ClusterState.RUNNING, run_id="run-1", launches=1)
    stopped = next_action(launching, None, False)
    assert stopped.action is Action.STOP
    assert "upgrader apply --run-id run-1" in stopped.reason
    assert next_action(launching, "UpgradingCRDs", False).action is Action.RESUME
    assert next_action(launching, "Done", False).action is Action.MARK_DONE
    job = launching.model_copy(update={"job": "run-1-1"})
    assert next_action(job, None, False).action is Action.START  # a Job's absence is read from the cluster


@pytest.mark.parametrize(
    ("code", "run_state", "expected"),
    [
        pytest.param(0, "Done", ClusterState.DONE, id="a run that ended Done"),
        pytest.param(0, None, ClusterState.DONE, id="exit 0 without a run: already at the target"),
        pytest.param(5, "Paused", ClusterState.PAUSED, id="a paused run pauses the cluster"),
        pytest.param(1, "Failed", ClusterState.FAILED, id="a failed run fails the cluster"),
        pytest.param(3, None, ClusterState.FAILED, id="a refused apply that left no run fails the cluster"),
        pytest.param(-9, "UpgradingCRDs", ClusterState.FAILED, id="a run killed mid-step is not Done"),
    ],
)
def test_a_clusters_state_after_its_process_ended(code: int, run_state: str | None, expected: ClusterState) -> None:
    """run_state_of: the checkpoint decides; without a run only exit 0 is Done."""
    assert run_state_of(code, run_state)[0] is expected


WINDOW_EVENT = json.dumps(
    {"event": REFUSED_EVENT, "reason": "no window is open now", "next": "the next window opens Sat 01:00 UTC"}
)


@pytest.mark.parametrize(
    ("code", "run_state", "lines", "expected"),
    [
        pytest.param(3, None, [WINDOW_EVENT, "error: x"], ClusterState.PAUSED, id="its window refused to start it"),
        pytest.param(3, "Paused", [WINDOW_EVENT], ClusterState.PAUSED, id="a paused run its window refused to resume"),
        pytest.param(3, None, ["error: lock held"], ClusterState.FAILED, id="refused for another reason"),
        pytest.param(1, None, [WINDOW_EVENT], ClusterState.FAILED, id="an event without a refusal's exit code"),
    ],
)
def test_a_run_refused_by_its_own_window_pauses_its_cluster(
    code: int, run_state: str | None, lines: list[str], expected: ClusterState
) -> None:
    """A run its window check would not start now (exit 3, the window-refused event) is Paused with the next
    opening, like a run paused from within; any other refusal still fails the cluster."""
    refused = window_refusal(["# 2026-12-01 apply --to stable-2.14.10", "not json {", *lines])
    state, reason = run_state_of(code, run_state, refused)
    assert state is expected
    if expected is ClusterState.PAUSED:
        assert reason == ("outside its maintenance window (no window is open now; the next window opens Sat 01:00 UTC)")


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param([ClusterState.DONE, ClusterState.SKIPPED], StageState.PASSED, id="done and skipped pass"),
        pytest.param([ClusterState.DONE, ClusterState.RUNNING], StageState.RUNNING, id="one still running"),
        pytest.param([ClusterState.DONE, ClusterState.FAILED], StageState.FAILED, id="one failed fails the stage"),
        pytest.param([ClusterState.PAUSED, ClusterState.PENDING], StageState.PAUSED, id="one paused pauses it"),
        pytest.param([ClusterState.PAUSED, ClusterState.FAILED], StageState.FAILED, id="failed wins over paused"),
    ],
)
def test_a_stage_passes_only_when_every_cluster_is_done(states: list[ClusterState], expected: StageState) -> None:
    """stage_outcome: the gate between stages."""
    clusters = [ClusterRecord(context=f"c{i}", stage="s", state=s) for i, s in enumerate(states)]
    assert stage_outcome(clusters) is expected


def test_metric_gates_after_the_bake_read_the_last_waves_namespaces() -> None:
    """The last hop's last wave is judged again: a namespace below minSuccessRate fails, an idle one passes."""
    plan = {
        "hops": [
            {"waves": [{"namespaces": ["old"]}]},
            {"waves": [{"namespaces": ["shop"]}, {"namespaces": ["payments", "idle"]}]},
        ]
    }
    assert last_wave_namespaces(plan) == ["payments", "idle"]

    class Metrics:
        def __init__(self) -> None:
            self.asked: list[tuple[str, int]] = []

        def sample(self, namespace: str, window_seconds: int) -> Sample:
            self.asked.append((namespace, window_seconds))
            if namespace == "idle":
                return Sample(namespace, None, None, 0.0)
            return Sample(namespace, 0.9, 20.0, 10.0)

    port = Metrics()
    spec = Spec(gates=Gates(prometheus_url="http://p:9090", metrics_window="1m"))
    failures = metric_gate_failures(port, ["payments", "idle"], spec)
    assert port.asked == [("payments", 60), ("idle", 60)]
    assert len(failures) == 1
    assert failures[0].startswith("payments: ")
    assert "success rate" in failures[0]


def test_a_cluster_outside_its_window_is_not_launched() -> None:
    """outside_window: the cluster's spec's windows, judged at the injected time."""
    spec = Spec.model_validate({"window": {"days": ["tue"], "start": "01:00", "end": "05:00", "timezone": "UTC"}})
    tuesday = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC)
    assert outside_window(spec, tuesday) is None
    closed = outside_window(spec, tuesday + dt.timedelta(hours=5))
    assert closed is not None
    assert "next window" in closed
    assert outside_window(Spec(), tuesday) is None


@pytest.mark.parametrize(
    ("job", "run_state", "expected"),
    [
        pytest.param(JobView(1, 0, 0, None), None, None, id="a Job whose pod runs is still going"),
        pytest.param(JobView(1, 0, 0, None), "Done", 0, id="its run Done ends it at once"),
        pytest.param(JobView(1, 0, 1, None), "Paused", 5, id="its run paused by a window pauses the cluster"),
        pytest.param(JobView(1, 0, 1, None), "Failed", None, id="a failed run is left to the Job's retries"),
        pytest.param(JobView(0, 0, 7, "Failed"), "Failed", 1, id="a Job that gave up fails the cluster"),
        pytest.param(JobView(0, 1, 0, "Complete"), None, 0, id="a Job complete without a run had nothing to do"),
        pytest.param(None, "UpgradingCRDs", 1, id="a Job deleted mid-run fails the cluster"),
        pytest.param(JobView(0, 0, 1, None), "RolledBack", 1, id="a rolled-back run fails the cluster"),
    ],
)
def test_a_clusters_job_as_an_exit_code(job: JobView | None, run_state: str | None, expected: int | None) -> None:
    """job_exit: the run's checkpoint first, then the Job's own status."""
    assert job_exit(job, run_state) == expected
