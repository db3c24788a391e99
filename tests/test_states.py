"""The run state machine is closed: only listed moves happen, and every state is reachable."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upgrader.states import HOP_SEQUENCE, TERMINAL, TRANSITIONS, IllegalTransition, RunState, check, mermaid


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


def test_terminal_states_have_no_way_out() -> None:
    """Done and RolledBack end a run."""
    assert all(TRANSITIONS[t] == frozenset() for t in TERMINAL)


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
        pytest.param(RunState.DONE, RunState.PREFLIGHT, id="a done run stays done"),
        pytest.param(RunState.ROLLED_BACK, RunState.ROLLING_BACK, id="a rolled back run stays rolled back"),
        pytest.param(RunState.VERIFYING_CONTROL_PLANE, RunState.DONE, id="no finish before the data plane"),
    ],
)
def test_illegal_moves_raise(here: RunState, there: RunState) -> None:
    """check refuses every move that is not in the table, naming the allowed ones."""
    with pytest.raises(IllegalTransition, match=f"{here} -> {there} is not allowed"):
        check(here, there)


@given(st.lists(st.sampled_from(list(RunState)), max_size=40))
def test_a_walk_that_follows_check_never_leaves_the_table(choices: list[RunState]) -> None:
    """Whatever order moves are attempted in, the states visited are only connected by listed moves."""
    state = RunState.PLANNED
    for wanted in choices:
        try:
            nxt = check(state, wanted)
        except IllegalTransition:
            assert wanted not in TRANSITIONS[state]
            continue
        assert nxt in TRANSITIONS[state]
        state = nxt


def test_mermaid_lists_every_transition() -> None:
    """The rendered diagram has one line per move."""
    text = mermaid()
    for here, theres in TRANSITIONS.items():
        for there in theres:
            assert f"    {here} --> {there}" in text
