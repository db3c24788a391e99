"""Maintenance windows: the grammar, midnight and DST, the per-step gate, plan fit, pausing and waiting."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
import typer
from structlog.testing import capture_logs

from tests.fakes import MemoryStore
from tests.test_execution import CAT, NOW, FakeCluster, _executor
from tests.test_execution_dataplane import _cluster, _plan
from upgrader import windows
from upgrader.checkpoints import Checkpoint, Restarted
from upgrader.cli.run import _print_result
from upgrader.errors import EXIT_BAD_INPUT, EXIT_PAUSED, EXIT_REFUSED, InputError
from upgrader.execution import RESTARTED_BY, WindowTooShortError
from upgrader.planning import KeepRelease, Observed, RestartWave, build_offering, make_plan, restart_rounds
from upgrader.rendering import render
from upgrader.runs import (
    OutsideWindowError,
    Session,
    next_step_estimate,
    recorded_durations,
    wait_for_window,
)
from upgrader.spec import Spec, window_from_text
from upgrader.states import RunState
from upgrader.windows import REFUSED_EVENT

UTC = dt.UTC


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def _rules(*texts: str) -> tuple[windows.Rule, ...]:
    return tuple(window_from_text(t).rule() for t in texts)


@pytest.mark.parametrize(
    ("text", "days"),
    [
        pytest.param("tue-thu", {1, 2, 3}, id="a range of days"),
        pytest.param("mon,wed,fri", {0, 2, 4}, id="a list of days"),
        pytest.param("fri-mon", {4, 5, 6, 0}, id="a range wraps over Sunday"),
        pytest.param("mon-tue,sat", {0, 1, 5}, id="ranges and days together"),
        pytest.param("daily", set(range(7)), id="daily is every day"),
    ],
)
def test_days_read_as_weekdays(text: str, days: set[int]) -> None:
    """Days are names, lists or ranges of names (Monday is 0)."""
    assert windows.parse_days(text) == days


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("02:00-02:00", "the window is empty", id="start equals end is empty"),
        pytest.param("tue-thu 01:00-05:00 Mars/Olympus_Mons", "not an IANA time zone", id="an unknown zone"),
        pytest.param("tue 25:00-05:00", "not a time like 02:00", id="hour 25"),
        pytest.param("someday 01:00-02:00", "not a day or a range of days", id="an unknown day"),
        pytest.param("tue 01:00-01:04 UTC margin=5m", "leaves no time", id="the margin is longer than the window"),
        pytest.param("tue", "has no HH:MM-HH:MM", id="no times"),
        pytest.param("tue 01:00-02:00 UTC later=1", "not understood", id="an unknown option"),
    ],
)
def test_bad_windows_on_the_command_line_are_bad_input(text: str, problem: str) -> None:
    """--window problems are InputErrors (exit 2) naming the option and what is wrong."""
    with pytest.raises(InputError) as info:
        window_from_text(text)
    assert info.value.exit_code == EXIT_BAD_INPUT
    assert problem in info.value.message
    assert "--window" in info.value.message


def test_a_command_line_window_reads_days_times_zone_and_margin() -> None:
    """`tue-thu 01:00-05:00 Europe/Berlin margin=10m` is one window with every part."""
    rule = window_from_text("tue-thu 01:00-05:00 Europe/Berlin margin=10m").rule()
    assert (rule.days, rule.start, rule.end, rule.zone, rule.margin) == (
        frozenset({1, 2, 3}),
        dt.time(1),
        dt.time(5),
        "Europe/Berlin",
        600,
    )


def test_outside_the_window_the_next_opening_is_named_in_its_zone() -> None:
    """Monday 22:40 UTC, window Tue-Thu 01:00 Berlin: it opens Tuesday 00:00 UTC."""
    rules = _rules("tue-thu 01:00-05:00 Europe/Berlin")
    fit = windows.fits(rules, _at("2026-11-30T22:40:00"), 60, "the next step")
    assert not fit.ok
    assert fit.next_opening is not None
    assert fit.next_opening.start == _at("2026-12-01T00:00:00")
    assert "opens Tue 2026-12-01 01:00 Europe/Berlin" in fit.next_text()


def test_a_window_crossing_midnight_is_open_on_both_sides_of_it() -> None:
    """22:00-02:00 opens on its days at 22:00 and closes at 02:00 the day after."""
    rules = _rules("mon 22:00-02:00 UTC margin=0s")
    assert windows.open_at(rules, _at("2026-11-30T23:30:00")) is not None  # Monday night
    current = windows.open_at(rules, _at("2026-12-01T01:00:00"))  # Tuesday morning, same opening
    assert current is not None
    assert current.end == _at("2026-12-01T02:00:00")
    assert windows.open_at(rules, _at("2026-12-01T22:30:00")) is None  # Tuesday night: not a day it opens


@pytest.mark.parametrize(
    ("now", "fits"),
    [
        pytest.param("2026-12-01T01:59:00", True, id="a 60 s step at 01:59 ends at 02:00 exactly: it fits"),
        pytest.param("2026-12-01T01:59:01", False, id="one second later it does not"),
    ],
)
def test_the_last_minute_of_a_window(now: str, fits: bool) -> None:
    """A step fits when it ends (with the margin) no later than the window closes."""
    assert windows.fits(_rules("mon 22:00-02:00 UTC margin=0s"), _at(now), 60, "the next step").ok is fits


def test_the_margin_is_kept_free_and_the_reason_names_closing_time_and_need() -> None:
    """10 min left, 6 min step, 5 min margin: no; the reason says when it closes and what the step needs."""
    fit = windows.fits(_rules("daily 01:00-05:00 Europe/Berlin"), _at("2026-12-01T03:50:00"), 360, "the next wave")
    assert not fit.ok
    assert fit.reason == "window closes at 05:00 Europe/Berlin; the next wave needs about 6 min plus the 5 min margin"
    assert fit.next_opening is not None
    assert fit.next_opening.start == _at("2026-12-02T00:00:00")


@pytest.mark.parametrize(
    ("day", "opens", "closes"),
    [
        pytest.param("2026-03-29", "2026-03-29T00:00:00", "2026-03-29T03:00:00", id="spring forward: 3 hours"),
        pytest.param("2026-10-25", "2026-10-24T23:00:00", "2026-10-25T04:00:00", id="fall back: 5 hours"),
        pytest.param("2026-11-29", "2026-11-29T00:00:00", "2026-11-29T04:00:00", id="an ordinary Sunday: 4 hours"),
    ],
)
def test_dst_days_change_how_long_a_window_lasts(day: str, opens: str, closes: str) -> None:
    """01:00-05:00 Europe/Berlin is local time: shorter the day clocks go forward, longer the day they go back."""
    current = windows.open_at(_rules("sun 01:00-05:00 Europe/Berlin"), _at(opens))
    assert current is not None
    assert (current.start, current.end) == (_at(opens), _at(closes)), day


def test_a_local_time_that_does_not_exist_opens_the_window_when_clocks_reach_it() -> None:
    """02:30 Berlin does not exist on 2026-03-29: the window opens at 03:30 CEST (01:30 UTC), never earlier."""
    current = windows.open_at(_rules("sun 02:30-04:00 Europe/Berlin"), _at("2026-03-29T01:45:00"))
    assert current is not None
    assert (current.start, current.end) == (_at("2026-03-29T01:30:00"), _at("2026-03-29T02:00:00"))


def test_a_local_time_that_happens_twice_closes_the_window_at_the_first() -> None:
    """02:30 Berlin happens twice on 2026-10-25: a window ending then closes at the first (00:30 UTC)."""
    current = windows.open_at(_rules("sun 01:00-02:30 Europe/Berlin"), _at("2026-10-25T00:00:00"))
    assert current is not None
    assert current.end == _at("2026-10-25T00:30:00")


def test_two_windows_that_touch_are_one_stretch() -> None:
    """01:00-03:00 and 03:00-05:00: at 02:59 a 60 min step fits (the windows are merged)."""
    rules = _rules("daily 01:00-03:00 UTC margin=0s", "daily 03:00-05:00 UTC margin=0s")
    assert windows.fits(rules, _at("2026-12-01T02:59:00"), 3600, "the next step").ok


def test_estimates_take_the_longest_recent_duration_else_the_default() -> None:
    """The estimate is the longest of the last five recorded durations; none recorded: the plan default."""
    assert windows.estimate([], 180) == 180
    assert windows.estimate([500, 10, 20, 30, 40, 50], 180) == 50
    assert windows.estimate([12.2, 30.5], 180) == 31


@pytest.mark.parametrize(
    ("pods", "per_namespace", "lanes", "rounds"),
    [
        pytest.param({"b": 3}, 1, 2, 3, id="one namespace's rounds follow one another, whatever the lanes"),
        pytest.param({"a": 1, "b": 1, "c": 1}, 1, 2, 2, id="three namespaces of one round share two lanes"),
        pytest.param({"a": 4, "b": 1}, 2, 2, 2, id="the busiest namespace sets the rounds when lanes are free"),
        pytest.param({"a": 2, "b": 2, "c": 2}, 1, 2, 3, id="more work than lanes: the work shared out"),
        pytest.param({}, 1, 2, 0, id="nothing to restart: no round"),
    ],
)
def test_rounds_of_restarts_in_a_wave(pods: dict[str, int], per_namespace: int, lanes: int, rounds: int) -> None:
    """A wave's rounds: at least its busiest namespace's, and at least all of them shared out over the lanes."""
    assert restart_rounds(pods, per_namespace, lanes) == rounds


# ---- planning ------------------------------------------------------------------------------------


def _window_plan(window: str, target: str = "stable-2.13.7", durations: dict[str, list[float]] | None = None):  # type: ignore[no-untyped-def]
    spec = Spec.model_validate({"waivers": ["kubernetes-version"]}).with_windows([window_from_text(window)])
    offering, _ = build_offering(CAT, None)
    observed = Observed(CAT.parse("stable-2.12.6"), {"shop": {"stable-2.12.6": 1}}, "v1.24.0")
    return make_plan(observed, CAT.parse(target), offering, CAT, spec, durations=durations)


def test_a_step_longer_than_any_window_is_refused_at_plan_time() -> None:
    """A 2-minute window cannot hold the 3-minute control-plane upgrade: refused, naming step and window."""
    plan = _window_plan("daily 01:00-01:02 UTC margin=0s")
    assert plan.refused is not None
    assert plan.refused.code == "step-longer-than-window"
    assert plan.refused.reason == (
        "no maintenance window is long enough for hop 1, linkerd-control-plane: it needs about 3 min; "
        "the longest, daily 01:00-01:02 UTC, leaves 2 min after its 0 s margin"
    )


def test_the_plan_says_the_run_fits_in_one_window() -> None:
    """One hop (about 8 min of steps) in a 30 min window: fits; every step carries its estimate."""
    plan = _window_plan("daily 01:00-01:30 UTC")
    assert plan.refused is None
    assert plan.windows == ["daily 01:00-01:30 UTC"]
    assert plan.window_fit is not None
    assert plan.window_fit.fits_one_window
    assert all(s.estimated_seconds > 0 for s in plan.hops[0].steps)


def test_the_plan_names_the_first_step_of_the_next_window() -> None:
    """Two hops in a 10 min window (1 min margin): the second hop's CRDs step opens the next window."""
    plan = _window_plan("daily 01:00-01:10 UTC margin=1m", target="stable-2.14.10")
    assert plan.window_fit is not None
    assert not plan.window_fit.fits_one_window
    assert plan.window_fit.first_of_next_window == "hop 2, linkerd-crds"


def test_recorded_durations_replace_the_defaults_in_the_plan() -> None:
    """Durations earlier runs recorded for a step kind make its estimate (a 20 s control-plane upgrade fits)."""
    plan = _window_plan("daily 01:00-01:02 UTC margin=0s", durations={"helm:linkerd-control-plane": [20.0]})
    assert plan.refused is None
    cp = next(s for s in plan.hops[0].steps if s.name == "linkerd-control-plane")
    assert cp.estimated_seconds == 20


# ---- the executor --------------------------------------------------------------------------------


class _SecondsCluster(FakeCluster):
    """Each wait for a change is a whole second, so a rollout of 130 ticks takes 130 s."""

    def wait_for_change(self, since: int, timeout: float) -> int:
        return super().wait_for_change(since, 1.0)


def _windowed(window: str, **data_plane: object) -> Spec:
    return Spec.model_validate({"waivers": ["kubernetes-version"], "dataPlane": data_plane}).with_windows(
        [window_from_text(window)]
    )


def _starts(cluster) -> list[dt.datetime]:  # type: ignore[no-untyped-def]
    return [NOW + dt.timedelta(seconds=t) for t, what, _ in cluster.timeline if what == "start"]


def test_the_run_pauses_between_waves_and_resumes_in_the_next_window_to_done() -> None:
    """Window 12:00-12:10 daily: wave a (5 min bake) fits, wave b does not; Paused with the reason and the
    next opening; resumed the next day it ends Done, and no restart started outside a window."""
    spec = _windowed(
        "daily 12:00-12:10 UTC margin=0s",
        waves=[
            {"name": "a", "namespaces": ["a"], "bakeTime": "5m"},
            {"name": "b", "namespaces": ["b"], "bakeTime": "5m"},
        ],
    )
    cluster, store = _cluster(a=1, b=1), MemoryStore()
    plan = _plan(spec, ["a", "b"])
    first = _executor(cluster, plan, store, spec=spec).run()
    assert first.state == RunState.PAUSED
    assert first.stopped_in == RunState.RESTARTING_DATA_PLANE
    assert first.waves_done == ["0/0"]
    assert "window closes at 12:10 UTC; the next step (wave b) needs about" in first.events[-1].reason
    assert "the next window opens Mon 2026-11-23 12:00 UTC" in first.events[-1].reason
    assert first.resume_after == _at("2026-11-23T12:00:00")
    assert first.next_command == "upgrader resume run-1 --wait-for-window"
    assert "restart" in first.durations, "the wave recorded how long a round of restarts took"
    cluster.now = _at("2026-11-23T12:00:00")
    second = _executor(cluster, plan, store, checkpoint=first, spec=spec).run()
    assert second.state == RunState.DONE
    assert second.resume_after is None
    rules = spec.window_rules()
    assert all(windows.open_at(rules, t) is not None for t in _starts(cluster)), _starts(cluster)
    assert len(_starts(cluster)) == 2


def test_in_flight_restarts_finish_when_the_window_closes_and_no_new_one_starts() -> None:
    """4 workloads, 2 at a time, 130 s each, window 3 min: the first two finish, the other two wait."""
    spec = _windowed("daily 12:00-12:03 UTC margin=0s", maxConcurrentPerNamespace=2)
    cluster, store = _SecondsCluster(), MemoryStore()
    cluster.workload_list, cluster.pod_versions = [], {}
    for i in range(4):
        cluster.add("Deployment", "a", f"app-{i}")
    cluster.ticks_per_rollout = 130
    result = _executor(cluster, _plan(spec, ["a"]), store, spec=spec).run()
    assert result.state == RunState.PAUSED
    assert len(_starts(cluster)) == 2
    assert cluster.now > _at("2026-11-22T12:02:00"), "the in-flight restarts ran to their end"
    assert "the next restart of wave all needs about 1 min" in result.events[-1].reason


def test_without_windows_nothing_is_held() -> None:
    """No window in the spec: the same run goes straight to Done."""
    spec = Spec.model_validate({"waivers": ["kubernetes-version"], "dataPlane": {"maxConcurrentPerNamespace": 2}})
    cluster = _cluster(a=4)
    cluster.ticks_per_rollout = 130
    assert _executor(cluster, _plan(spec, ["a"]), MemoryStore(), spec=spec).run().state == RunState.DONE


# ---- apply and resume outside a window ---------------------------------------------------------


def _session(window: str) -> Session:
    spec = _windowed(window)
    return Session(spec, CAT, _plan(spec, ["a"]))


def test_outside_the_window_a_run_is_refused_with_the_next_opening() -> None:
    """No --wait-for-window: exit 3, naming when the window opens and how to wait for it."""
    session = _session("daily 01:00-05:00 Europe/Berlin")
    cp = _executor(_cluster(a=1), session.plan, MemoryStore(), spec=session.spec).checkpoint
    with pytest.raises(OutsideWindowError) as info:
        wait_for_window(session, cp, "upgrader apply", wait=False, clock=lambda: NOW, sleep=lambda _s: None, say=print)
    assert info.value.exit_code == EXIT_REFUSED
    assert "the next window opens Mon 2026-11-23 01:00 Europe/Berlin" in info.value.message
    assert "upgrader apply --wait-for-window" in info.value.hint


def test_wait_for_window_sleeps_through_the_injected_clock_with_progress_lines() -> None:
    """--wait-for-window: sleeps (never for real) until the window opens, saying when it opens."""
    session = _session("daily 13:00-14:00 UTC")
    cp = _executor(_cluster(a=1), session.plan, MemoryStore(), spec=session.spec).checkpoint
    now = [NOW]
    lines: list[str] = []

    def sleep(seconds: float) -> None:
        now[0] += dt.timedelta(seconds=seconds)

    wait_for_window(session, cp, "upgrader apply", wait=True, clock=lambda: now[0], sleep=sleep, say=lines.append)
    assert now[0] == _at("2026-11-22T13:00:00")
    assert (
        lines[0] == "waiting for the maintenance window: the next window opens Sun 2026-11-22 13:00 UTC (in 1 h 0 min)"
    )
    assert len(lines) == 12, "a line at least every 5 minutes"


# ---- review fixes --------------------------------------------------------------------------------


def test_the_gate_runs_before_the_run_enters_a_step_and_resume_enters_that_step() -> None:
    """The 10 min bake ends at 12:10; verify-data-plane (recorded 25 min) does not fit before 12:30: the run
    pauses still in RestartingDataPlane's end, stopped in VerifyingDataPlane (the step not entered), with no
    mark for it; resumed the next day it verifies once and ends Done."""
    spec = _windowed("daily 12:00-12:30 UTC margin=0s", waves=[{"name": "a", "namespaces": ["a"], "bakeTime": "10m"}])
    cluster, store = _cluster(a=1), MemoryStore()
    plan = _plan(spec, ["a"])
    executor = _executor(cluster, plan, store, spec=spec)
    executor.durations = {"verify-data-plane": [1500.0]}
    first = executor.run()
    assert first.state == RunState.PAUSED
    assert first.stopped_in == RunState.VERIFYING_DATA_PLANE
    assert first.step == len(plan.hops[0].steps) - 1
    assert RunState.VERIFYING_DATA_PLANE not in [m.state for m in first.marks], "no mark for a step not entered"
    assert "the next step (verify-data-plane) needs about 25 min" in first.events[-1].reason
    cluster.now = _at("2026-11-23T12:00:00")
    again = _executor(cluster, plan, store, checkpoint=first, spec=spec)
    again.durations = executor.durations
    second = again.run()
    assert second.state == RunState.DONE
    assert [m.state for m in second.marks].count(RunState.VERIFYING_DATA_PLANE) == 1
    assert len(_starts(cluster)) == 1, "the wave was not redone"


def test_a_step_no_window_can_hold_ends_the_run_refused_instead_of_pausing_forever() -> None:
    """Recorded durations grew past the window (verify-data-plane 2 h, window 1 h): no pause that would
    never end, but Failed with exit 3 naming the step, its need and a wider --window."""
    spec = _windowed("daily 12:00-13:00 UTC margin=0s")
    cluster = _cluster(a=1)
    executor = _executor(cluster, _plan(spec, ["a"]), MemoryStore(), spec=spec)
    executor.durations = {"verify-data-plane": [7200.0]}
    with pytest.raises(WindowTooShortError) as info:
        executor.run()
    assert info.value.exit_code == EXIT_REFUSED
    assert "no maintenance window is long enough for the next step (verify-data-plane): it needs about 2 h 0 min" in (
        info.value.message
    )
    assert "--window" in info.value.hint
    assert executor.checkpoint.state == RunState.FAILED
    assert executor.checkpoint.stopped_in == RunState.VERIFYING_DATA_PLANE


def test_wait_for_window_refuses_a_step_no_window_can_hold_instead_of_waiting_forever() -> None:
    """--wait-for-window with a 9 min window and a preflight recorded at 10 min: refused at once (exit 3),
    never sleeping."""
    session = _session("daily 13:00-13:09 UTC margin=0s")
    assert session.plan.refused is None
    cp = _executor(_cluster(a=1), session.plan, MemoryStore(), spec=session.spec).checkpoint

    def never(_seconds: float) -> None:
        raise AssertionError("slept")

    with pytest.raises(OutsideWindowError) as info:
        wait_for_window(
            session, cp, "upgrader apply --to x", wait=True, clock=lambda: NOW, sleep=never, say=print,
            durations={"preflight": [600.0]},
        )  # fmt: skip
    assert info.value.exit_code == EXIT_REFUSED
    assert "no maintenance window is long enough for the next step (preflight): it needs about 10 min" in (
        info.value.message
    )
    assert info.value.hint.startswith('give a window long enough for it: upgrader apply --to x --window "')


def test_a_new_runs_refusal_names_no_run_id_and_repeats_the_users_command() -> None:
    """The refused run was never stored: the message says "the run", the hint is the command with --wait-for-window."""
    session = _session("daily 01:00-05:00 Europe/Berlin")
    cp = _executor(_cluster(a=1), session.plan, MemoryStore(), spec=session.spec).checkpoint
    command = "upgrader apply --to stable-2.13.7 --spec w.yaml --yes"
    with capture_logs() as events, pytest.raises(OutsideWindowError) as info:
        wait_for_window(session, cp, command, wait=False, clock=lambda: NOW, sleep=lambda _s: None, say=print)
    assert info.value.message.startswith("the run does not start now: outside the maintenance window")
    assert "run-1" not in info.value.message
    [refused] = [e for e in events if e["event"] == REFUSED_EVENT]  # what a rollout reads to pause, not fail
    assert refused["next"] in info.value.message
    assert refused["opens"] is not None
    assert info.value.hint == f"run it then, or wait for it: {command} --wait-for-window"


def test_wave_estimates_count_workloads_not_pods() -> None:
    """One Deployment with 10 pods, 1 restart at a time: one round of restarts, not ten."""
    spec = _windowed("daily 01:00-05:00 UTC margin=0s", maxConcurrentPerNamespace=1)
    cluster = _cluster()
    cluster.add("Deployment", "a", "big", replicas=10)
    view = cluster.data_plane()
    offering, _ = build_offering(CAT, None)
    observed = Observed(CAT.parse("stable-2.12.6"), {"a": {"stable-2.12.6": 10}}, "v1.24.0", data_plane_view=view)
    plan = make_plan(observed, CAT.parse("stable-2.13.7"), offering, CAT, spec)
    assert plan.hops[0].waves[0].workloads == {"a": 1}
    wave = next(s for s in plan.hops[0].steps if s.name.startswith("wave"))
    assert wave.estimated_seconds == 60, "one round of one restart (the default minute)"


def test_apply_and_the_executor_estimate_the_next_step_with_one_function() -> None:
    """A run paused inside its wave (2 of 4 workloads restarted, 2 at a time): resume's wait and the
    executor's gate both see one round left, with this run's own recorded restart duration."""
    spec = _windowed("daily 12:00-13:00 UTC margin=0s", maxConcurrentPerNamespace=2)
    cluster = _cluster(a=4)
    plan = _plan(spec, ["a"])
    hop = plan.hops[0].model_copy(update={"waves": [plan.hops[0].waves[0].model_copy(update={"workloads": {"a": 4}})]})
    plan = plan.model_copy(update={"hops": [hop]})
    executor = _executor(cluster, plan, MemoryStore(), spec=spec)
    number = next(n for n, s in enumerate(hop.steps) if s.name.startswith("wave"))
    cp = executor.checkpoint
    cp.step, cp.durations = number, {"restart": [200.0]}
    for w in cluster.workload_list[:2]:
        cp.restarted.append(Restarted(kind=w.kind, namespace=w.namespace, name=w.name, hop=0))
        cluster.workload_list[cluster.workload_list.index(w)] = dataclasses.replace(
            w, pod_annotations={**w.pod_annotations, RESTARTED_BY: f"{cp.run_id}/0"}
        )
    session = Session(spec, CAT, plan)
    assert next_step_estimate(session, cp, {}) == (200, f"the next step ({hop.steps[number].name})")
    assert executor.step_estimate(0, hop, hop.steps[number]) == 200


def test_a_workload_recorded_twice_by_a_resume_counts_once_as_done_in_the_wave_estimate() -> None:
    """2 of 4 workloads restarted, each recorded twice (a stop mid-batch, then a resume): still one round left."""
    spec = _windowed("daily 12:00-13:00 UTC margin=0s", maxConcurrentPerNamespace=2)
    plan = _plan(spec, ["a"])
    hop = plan.hops[0].model_copy(update={"waves": [plan.hops[0].waves[0].model_copy(update={"workloads": {"a": 4}})]})
    plan = plan.model_copy(update={"hops": [hop]})
    cp = Checkpoint.new("run-1", plan.as_json(), NOW)
    number = next(n for n, s in enumerate(hop.steps) if s.name.startswith("wave"))
    cp.step, cp.durations = number, {"restart": [200.0]}
    for _ in range(2):
        cp.restarted += [Restarted(kind="Deployment", namespace="a", name=f"app-{i}", hop=0) for i in range(2)]
    assert next_step_estimate(Session(spec, CAT, plan), cp, {}) == (200, f"the next step ({hop.steps[number].name})")


def test_recorded_durations_are_kept_per_cluster_and_namespace() -> None:
    """Staging and production share a file store: each reads only its own runs' durations."""
    store = MemoryStore()
    for run_id, cluster, seconds in (("run-s", "https://staging:6443", 10.0), ("run-p", "https://prod:6443", 99.0)):
        cp = Checkpoint.new(run_id, _plan(_windowed("daily 01:00-05:00 UTC"), ["a"]).as_json(), NOW)
        cp.options = {"namespace": "linkerd", "cluster": cluster}
        cp.durations = {"preflight": [seconds]}
        store.store(checkpoint=cp)
    assert recorded_durations(store, "linkerd", "https://prod:6443") == {"preflight": [99.0]}
    assert recorded_durations(store, "linkerd", "https://staging:6443") == {"preflight": [10.0]}
    assert recorded_durations(store, "linkerd", "https://other:6443") == {}


def test_steps_that_found_their_work_done_record_no_duration() -> None:
    """A resumed run re-entering the control-plane step finds it done: no second duration for it."""
    spec = _windowed("daily 12:00-23:00 UTC margin=0s")
    cluster, store = _cluster(a=1), MemoryStore()
    plan = _plan(spec, ["a"])
    done = _executor(cluster, plan, store, spec=spec).run()
    assert done.state == RunState.DONE
    recorded = dict(done.durations)
    assert len(recorded["helm:linkerd-control-plane"]) == 1
    again = done.model_copy(deep=True)
    again.state, again.stopped_in, again.step = RunState.FAILED, RunState.UPGRADING_CRDS, 1
    resumed = _executor(cluster, plan, store, checkpoint=again, spec=spec).run()
    assert resumed.state == RunState.DONE
    assert resumed.durations["helm:linkerd-control-plane"] == recorded["helm:linkerd-control-plane"]
    assert resumed.durations["helm:linkerd-crds"] == recorded["helm:linkerd-crds"]


def test_a_step_with_nothing_to_do_never_pauses_the_run() -> None:
    """Outside every window a kept release, a release already at its chart version and a wave with nothing
    left to restart estimate 0 s: the gate lets them through."""
    spec = _windowed("daily 01:00-02:00 UTC margin=0s")
    cluster = _cluster(a=1)
    plan = _plan(spec, ["a"])
    executor = _executor(cluster, plan, MemoryStore(), spec=spec)
    hop = plan.hops[0]
    crds = next(s for s in hop.steps if s.name == "linkerd-crds")
    assert executor.step_estimate(0, hop, crds) == 60
    cluster.releases["linkerd-crds"] = cluster.releases["linkerd-crds"].__class__(
        **{**cluster.releases["linkerd-crds"].__dict__, "chart_version": crds.chart_version}
    )
    assert executor.step_estimate(0, hop, crds) == 0
    executor._window_gate(0, hop, crds)  # outside the window, and no pause
    kept = KeepRelease(release="linkerd-crds", namespace="linkerd", name="keep", state=RunState.UPGRADING_CRDS)
    assert executor.step_estimate(0, hop, kept) == 0
    executor.checkpoint.waves_done.append("0/0")
    wave = next(s for s in hop.steps if isinstance(s, RestartWave))
    assert executor.step_estimate(0, hop, wave) == 0


def test_touching_windows_hold_a_step_longer_than_either() -> None:
    """01:00-03:00 and 03:00-05:00 are one 4 h stretch: a 3 h step is planned, not refused."""
    spec = Spec.model_validate({"waivers": ["kubernetes-version"]}).with_windows(
        [window_from_text("daily 01:00-03:00 UTC margin=0s"), window_from_text("daily 03:00-05:00 UTC margin=0s")]
    )
    offering, _ = build_offering(CAT, None)
    observed = Observed(CAT.parse("stable-2.12.6"), {"shop": {"stable-2.12.6": 1}}, "v1.24.0")
    plan = make_plan(
        observed, CAT.parse("stable-2.13.7"), offering, CAT, spec, durations={"helm:linkerd-control-plane": [10800.0]}
    )
    assert plan.refused is None
    assert windows.capacity(spec.window_rules()).seconds == 4 * 3600


def test_capacity_is_the_shortest_opening_of_a_weekly_window_over_a_year() -> None:
    """Sundays 01:00-05:00 Berlin last 3 h on the day clocks spring forward: a Sunday-only window holds 3 h."""
    assert windows.capacity(_rules("sun 01:00-05:00 Europe/Berlin margin=0s")).seconds == 3 * 3600
    assert windows.capacity(_rules("mon 01:00-05:00 Europe/Berlin margin=0s")).seconds == 4 * 3600


def test_the_plan_shows_a_sub_minute_margin_and_totals_from_step_estimates() -> None:
    """A 30 s margin reads "30 s", not "0 min"; the plan's minutes are its steps' seconds summed."""
    plan = _window_plan("daily 01:00-01:30 UTC margin=30s")
    assert "each step with a 30 s margin" in render(plan, "table")
    total = sum(s.estimated_seconds for h in plan.hops for s in h.steps)
    assert plan.estimated_minutes == -(-total // 60)
    assert plan.hops[0].estimated_minutes == plan.estimated_minutes


def test_the_pause_names_the_resume_command_with_the_spec_when_it_is_needed() -> None:
    """A run whose spec holds what checkpoints never store: its next command passes --spec FILE."""
    spec = _windowed(
        "daily 12:00-12:10 UTC margin=0s",
        waves=[
            {"name": "a", "namespaces": ["a"], "bakeTime": "5m"},
            {"name": "b", "namespaces": ["b"], "bakeTime": "5m"},
        ],
    )
    cluster, store = _cluster(a=1, b=1), MemoryStore()
    executor = _executor(cluster, _plan(spec, ["a", "b"]), store, spec=spec)
    executor.checkpoint.spec_has_values = True
    assert executor.run().next_command == "upgrader resume run-1 --spec FILE --wait-for-window"


def test_apply_ending_paused_by_a_window_exits_5_with_the_reason_and_the_next_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 5 (paused: resume later); a Paused run from an interrupt (no window) keeps its own way out."""
    cp = Checkpoint.new("run-9", {}, NOW)
    cp.state = RunState.PAUSED
    cp.next_command = "upgrader resume run-9 --wait-for-window"
    with pytest.raises(typer.Exit) as info:
        _print_result(cp)
    assert info.value.exit_code == EXIT_PAUSED == 5
    assert "next: upgrader resume run-9 --wait-for-window" in capsys.readouterr().out
    cp.next_command = "upgrader rollback run-9"
    _print_result(cp)  # no exit 5
