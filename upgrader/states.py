"""The run state machine: one closed set of states and the transitions between them.

A run starts ``Planned``. Each hop goes ``Preflight -> UpgradingCRDs ->
UpgradingControlPlane -> VerifyingControlPlane -> UpgradingExtensions ->
RestartingDataPlane -> VerifyingDataPlane`` and then either starts the next hop
(``Preflight``) or ends ``Done``. Any acting state may fail (``Failed``) or be paused by an
operator, a closing maintenance window or a gate with ``on_failure: pause`` (``Paused``).
A failed, paused or done run may be rolled back (``RollingBack -> RolledBack``), one hop
(one major) per rollback: a ``RolledBack`` run whose earlier hops changed something may be
rolled back again (``RolledBack -> RollingBack``). ``RolledBack`` and ``Done`` are terminal
(no forward progress); they lead nowhere but to a rollback. A rollback that fails ends
``Failed`` (stopped in ``RollingBack``), one interrupted ends ``Paused``: never in ``RollingBack``.

``TRANSITIONS`` is the table reviewers see (and the only one). It lists every move some run
can make, derived from ``ROUTES``, the shapes of hop the planner makes (each hop's route is
the run states of its typed steps, in order); ``Machine`` adds the rules a table cannot
hold: ``Paused`` and ``Failed`` lead back only to the state the run stopped in (resume, or
retry of the failed step), never to another step; once a run is rolling back it can only go
on rolling back; and inside a hop the run follows that hop's own route (a catch-up hop goes
from ``Preflight`` straight to ``RestartingDataPlane``; a full hop may not). The executor
moves a ``Machine``; nothing else changes run state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class RunState(StrEnum):
    PLANNED = "Planned"
    PREFLIGHT = "Preflight"
    UPGRADING_CRDS = "UpgradingCRDs"
    UPGRADING_CONTROL_PLANE = "UpgradingControlPlane"
    VERIFYING_CONTROL_PLANE = "VerifyingControlPlane"
    UPGRADING_EXTENSIONS = "UpgradingExtensions"
    RESTARTING_DATA_PLANE = "RestartingDataPlane"
    VERIFYING_DATA_PLANE = "VerifyingDataPlane"
    PAUSED = "Paused"
    FAILED = "Failed"
    ROLLING_BACK = "RollingBack"
    ROLLED_BACK = "RolledBack"
    DONE = "Done"


S = RunState
HOP_SEQUENCE: tuple[RunState, ...] = (
    S.PREFLIGHT,
    S.UPGRADING_CRDS,
    S.UPGRADING_CONTROL_PLANE,
    S.VERIFYING_CONTROL_PLANE,
    S.UPGRADING_EXTENSIONS,
    S.RESTARTING_DATA_PLANE,
    S.VERIFYING_DATA_PLANE,
)
ACTING: frozenset[RunState] = frozenset(HOP_SEQUENCE)
TERMINAL: frozenset[RunState] = frozenset({S.DONE, S.ROLLED_BACK})  # no further forward progress


# A hop's route is the run states of its steps, in order. The planner makes these shapes
# (a test checks every plan's route is one of them): a full cycle; a hop without CRDs step
# (the linkerd2 chart before 2.12); without extensions or waves; and the data-plane catch-up.
_OPTIONAL = (S.UPGRADING_CRDS, S.UPGRADING_EXTENSIONS, S.RESTARTING_DATA_PLANE)


def _routes() -> tuple[tuple[RunState, ...], ...]:
    routes = []
    for skip in itertools.chain.from_iterable(itertools.combinations(_OPTIONAL, n) for n in range(4)):
        routes.append(tuple(s for s in HOP_SEQUENCE if s not in skip))
    routes.append((S.PREFLIGHT, S.RESTARTING_DATA_PLANE, S.VERIFYING_DATA_PLANE))
    routes.append((S.PREFLIGHT, S.VERIFYING_DATA_PLANE))
    return tuple(routes)


ROUTES: tuple[tuple[RunState, ...], ...] = _routes()


def route_of(states: Iterable[RunState]) -> tuple[RunState, ...]:
    """A hop's route from its steps' states (repeats collapse: three waves are one state)."""
    route: list[RunState] = []
    for state in states:
        if not route or route[-1] != state:
            route.append(state)
    return tuple(route)


def _forward(route: tuple[RunState, ...]) -> dict[RunState, set[RunState]]:
    moves: dict[RunState, set[RunState]] = {s: set() for s in route}
    for here, there in itertools.pairwise(route):
        moves[here].add(there)
    moves[route[-1]] |= {S.PREFLIGHT, S.DONE}  # next hop, or the end
    return moves


def _transitions() -> dict[RunState, frozenset[RunState]]:
    table: dict[RunState, set[RunState]] = {s: set() for s in RunState}
    table[S.PLANNED] = {S.PREFLIGHT}
    for route in ROUTES:
        for here, there in _forward(route).items():
            table[here] |= there
    for acting in ACTING:
        table[acting] |= {S.FAILED, S.PAUSED}
    table[S.PREFLIGHT].add(S.ROLLING_BACK)  # a later hop's preflight may call the run off
    table[S.PAUSED] = set(ACTING) | {S.ROLLING_BACK, S.FAILED}  # resume where it paused
    table[S.FAILED] = set(ACTING) | {S.PAUSED, S.ROLLING_BACK}  # retry the failed step
    table[S.ROLLING_BACK] = {S.ROLLED_BACK, S.FAILED, S.PAUSED}
    table[S.DONE] = {S.ROLLING_BACK}  # a finished run can still be rolled back
    table[S.ROLLED_BACK] = {S.ROLLING_BACK}  # one hop per rollback: the next one goes one more major back
    return {s: frozenset(t) for s, t in table.items()}


TRANSITIONS: dict[RunState, frozenset[RunState]] = _transitions()


class IllegalTransition(RuntimeError):
    """A move the state machine does not allow (a bug, never user input)."""


def check(current: RunState, nxt: RunState) -> RunState:
    """Return ``nxt`` if ``current -> nxt`` is allowed, else raise IllegalTransition."""
    if nxt not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (terminal)"
        raise IllegalTransition(f"{current} -> {nxt} is not allowed; from {current}: {allowed}")
    return nxt


def mermaid() -> str:
    """The state machine as a Mermaid state diagram (for markdown plans)."""
    lines = ["stateDiagram-v2", f"    [*] --> {S.PLANNED}"]
    for here in RunState:
        lines += [f"    {here} --> {there}" for there in sorted(TRANSITIONS[here])]
    lines += [f"    {t} --> [*]" for t in sorted(TERMINAL)]
    return "\n".join(lines)


@dataclass
class Machine:
    """A run's current state, moved only along the table and the resume rule."""

    state: RunState = RunState.PLANNED
    stopped_in: RunState | None = None  # the acting state a Paused/Failed run came from
    history: list[RunState] = field(default_factory=list)
    route: tuple[RunState, ...] | None = None  # the current hop's route (from its steps); None: the table

    def allowed(self) -> frozenset[RunState]:
        """Where this run may go next: the table, narrowed to the current hop's route."""
        if self.state in (S.PAUSED, S.FAILED):
            resume = self.stopped_in or S.PREFLIGHT
            options: set[RunState] = {resume} if resume != S.ROLLING_BACK else set()
            options.add(S.ROLLING_BACK)
            options.add(S.FAILED if self.state == S.PAUSED else S.PAUSED)
            return frozenset(options & TRANSITIONS[self.state])
        table = TRANSITIONS[self.state]
        if self.route is None or self.state not in self.route:
            return table
        forward = _forward(self.route)[self.state]
        return frozenset(t for t in table if t not in ACTING or t in forward)

    def move(self, nxt: RunState) -> RunState:
        """Go to ``nxt`` or raise IllegalTransition naming what is allowed."""
        if nxt not in self.allowed():
            allowed = ", ".join(sorted(self.allowed())) or "none (terminal)"
            extra = f" (stopped in {self.stopped_in})" if self.stopped_in else ""
            raise IllegalTransition(f"{self.state} -> {nxt} is not allowed{extra}; allowed: {allowed}")
        if nxt in (S.PAUSED, S.FAILED) and self.state not in (S.PAUSED, S.FAILED):
            self.stopped_in = self.state
        elif nxt not in (S.PAUSED, S.FAILED):
            self.stopped_in = None
        self.history.append(self.state)
        self.state = nxt
        return nxt
