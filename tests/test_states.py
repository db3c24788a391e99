"""The run state machine is closed: only listed moves happen, and every state is reachable."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upgrader.states import (
    ACTING,
    HOP_SEQUENCE,
    ROUTES,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Machine,
    RunState,
    check,
    mermaid,
    route_of,
)


def _reachable(start: RunState) -> set[RunState]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_every_state_is_reachable_from_planned() -> None:
    """No state is dead code: all are reachable from Planned."""
    assert _reachable(RunState.PLANNED) == set(RunState)


def test_terminal_states_only_lead_to_a_rollback() -> None:
    """Done and RolledBack end a run's progress; either can only be rolled back (one more hop back)."""
    assert TRANSITIONS[RunState.ROLLED_BACK] == frozenset({RunState.ROLLING_BACK})
    assert TRANSITIONS[RunState.DONE] == frozenset({RunState.ROLLING_BACK})
    assert {RunState.DONE, RunState.ROLLED_BACK} == TERMINAL


def test_every_non_terminal_state_can_end() -> None:
    """From any state that is not terminal a terminal state can still be reached."""
    for state in set(RunState) - TERMINAL:
        assert _reachable(state) & TERMINAL, state


def test_a_hop_runs_its_steps_in_order() -> None:
    """Preflight -> CRDs -> control plane -> verify -> extensions -> data plane -> verify is a legal path."""
    path = [RunState.PLANNED, *HOP_SEQUENCE, RunState.PREFLIGHT, *HOP_SEQUENCE[1:], RunState.DONE]
    for here, there in itertools.pairwise(path):
        assert check(here, there) is there


@pytest.mark.parametrize(
    ("here", "there"),
    [
        pytest.param(RunState.PLANNED, RunState.UPGRADING_CONTROL_PLANE, id="no control plane before preflight"),
        pytest.param(RunState.UPGRADING_CRDS, RunState.RESTARTING_DATA_PLANE, id="no data plane before control plane"),
        pytest.param(RunState.DONE, RunState.PREFLIGHT, id="a done run never starts another hop"),
        pytest.param(RunState.ROLLED_BACK, RunState.PREFLIGHT, id="a rolled back run never runs a hop again"),
        pytest.param(RunState.VERIFYING_CONTROL_PLANE, RunState.DONE, id="no finish before the data plane"),
    ],
)
def test_illegal_moves_raise(here: RunState, there: RunState) -> None:
    """check refuses every move that is not in the table, naming the allowed ones."""
    with pytest.raises(IllegalTransition, match=f"{here} -> {there} is not allowed"):
        check(here, there)


def _next_in_hop(state: RunState, route: tuple[RunState, ...]) -> set[RunState]:
    """Where a run may go when it moves on (not pausing, failing or rolling back)."""
    if state == RunState.PLANNED:
        return {RunState.PREFLIGHT}
    if state == route[-1]:
        return {RunState.PREFLIGHT, RunState.DONE}
    return {route[route.index(state) + 1]}


@given(st.sampled_from(ROUTES), st.lists(st.sampled_from(list(RunState)), max_size=60))
def test_no_sequence_of_moves_skips_a_step_or_resumes_a_rollback_as_an_upgrade(
    route: tuple[RunState, ...], choices: list[RunState]
) -> None:
    """Whatever moves are tried, the upgrade states a run passes through follow its hop's route exactly
    (a pause or failure resumes the same step), and after RollingBack no upgrade state is entered."""
    machine = Machine(route=route)
    last_progress = RunState.PLANNED  # the last upgrade state entered (or Planned)
    rolling_back = False
    for wanted in choices:
        try:
            machine.move(wanted)
        except IllegalTransition:
            continue
        state = machine.state
        if state == RunState.ROLLING_BACK:
            rolling_back = True
        if state in ACTING or state == RunState.DONE:
            assert not rolling_back, f"entered {state} after rolling back: {machine.history}"
            assert state == last_progress or state in _next_in_hop(last_progress, route), [*machine.history, state]
            last_progress = state


def test_a_catch_up_route_goes_from_preflight_to_the_data_plane_and_a_full_route_does_not() -> None:
    """The hop's route decides: Preflight -> RestartingDataPlane is legal for a data-plane hop only."""
    catch_up = Machine(
        route=route_of([RunState.PREFLIGHT, RunState.RESTARTING_DATA_PLANE, RunState.VERIFYING_DATA_PLANE])
    )
    catch_up.move(RunState.PREFLIGHT)
    catch_up.move(RunState.RESTARTING_DATA_PLANE)
    full = Machine(route=HOP_SEQUENCE)
    full.move(RunState.PREFLIGHT)
    with pytest.raises(IllegalTransition):
        full.move(RunState.RESTARTING_DATA_PLANE)


def test_a_paused_run_resumes_only_where_it_stopped() -> None:
    """Preflight -> Paused cannot jump to the data plane; it resumes Preflight."""
    machine = Machine()
    machine.move(RunState.PREFLIGHT)
    machine.move(RunState.PAUSED)
    with pytest.raises(IllegalTransition, match="stopped in Preflight"):
        machine.move(RunState.RESTARTING_DATA_PLANE)
    assert machine.move(RunState.PREFLIGHT) == RunState.PREFLIGHT


def test_a_rollback_that_pauses_resumes_rolling_back() -> None:
    """RollingBack -> Paused can only go back to RollingBack (or fail), never to an upgrade step."""
    machine = Machine()
    for s in (RunState.PREFLIGHT, RunState.UPGRADING_CRDS, RunState.FAILED, RunState.ROLLING_BACK, RunState.PAUSED):
        machine.move(s)
    assert machine.allowed() == {RunState.ROLLING_BACK, RunState.FAILED}


def test_mermaid_lists_every_transition() -> None:
    """The rendered diagram has one line per move."""
    text = mermaid()
    for here, theres in TRANSITIONS.items():
        for there in theres:
            assert f"    {here} --> {there}" in text
