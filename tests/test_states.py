"""The run state machine is closed: only listed moves happen, and every state is reachable."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upgrader.states import (
    ACTING,
    HOP_SEQUENCE,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    Machine,
    RunState,
    check,
    mermaid,
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
    """RolledBack ends a run; Done can only be rolled back."""
    assert TRANSITIONS[RunState.ROLLED_BACK] == frozenset()
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
        pytest.param(RunState.ROLLED_BACK, RunState.ROLLING_BACK, id="a rolled back run stays rolled back"),
        pytest.param(RunState.VERIFYING_CONTROL_PLANE, RunState.DONE, id="no finish before the data plane"),
    ],
)
def test_illegal_moves_raise(here: RunState, there: RunState) -> None:
    """check refuses every move that is not in the table, naming the allowed ones."""
    with pytest.raises(IllegalTransition, match=f"{here} -> {there} is not allowed"):
        check(here, there)


def _next_in_hop(state: RunState) -> set[RunState]:
    """Where a run may go when it moves on (not pausing, failing or rolling back)."""
    if state == RunState.PLANNED:
        return {RunState.PREFLIGHT}
    if state == RunState.VERIFYING_DATA_PLANE:
        return {RunState.PREFLIGHT, RunState.DONE}
    i = HOP_SEQUENCE.index(state)
    return {HOP_SEQUENCE[i + 1]}


@given(st.lists(st.sampled_from(list(RunState)), max_size=60))
def test_no_sequence_of_moves_skips_a_step_or_resumes_a_rollback_as_an_upgrade(choices: list[RunState]) -> None:
    """Whatever moves are tried, the upgrade states a run passes through follow the hop order exactly
    (a pause or failure resumes the same step), and after RollingBack no upgrade state is entered."""
    machine = Machine()
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
            assert state == last_progress or state in _next_in_hop(last_progress), [*machine.history, state]
            last_progress = state


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
