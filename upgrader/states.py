"""The run state machine: one closed set of states and the transitions between them.

A run starts ``Planned``. Each hop goes ``Preflight -> UpgradingCRDs ->
UpgradingControlPlane -> VerifyingControlPlane -> UpgradingExtensions ->
RestartingDataPlane -> VerifyingDataPlane`` and then either starts the next hop
(``Preflight``) or ends ``Done``. Any acting state may fail (``Failed``) or be paused by an
operator, a closing maintenance window or a gate with ``on_failure: pause`` (``Paused``);
a paused run resumes into the state it paused in. A failed or paused run may be rolled
back (``RollingBack -> RolledBack``). ``Done`` and ``RolledBack`` are terminal; ``Failed``
only leads to a retry of the failed step, a pause, or a rollback.

The table below is the only definition: the executor asks ``check`` before every move and
the plan renders ``TRANSITIONS`` for reviewers.
"""

from __future__ import annotations

import itertools
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
TERMINAL: frozenset[RunState] = frozenset({S.DONE, S.ROLLED_BACK})


def _transitions() -> dict[RunState, frozenset[RunState]]:
    table: dict[RunState, set[RunState]] = {s: set() for s in RunState}
    table[S.PLANNED] = {S.PREFLIGHT}
    for here, there in itertools.pairwise(HOP_SEQUENCE):
        table[here].add(there)
    table[S.VERIFYING_DATA_PLANE] |= {S.PREFLIGHT, S.DONE}  # next hop, or the end
    for acting in ACTING:
        table[acting] |= {S.FAILED, S.PAUSED}
    table[S.PREFLIGHT].add(S.ROLLING_BACK)  # a later hop's preflight may call the run off
    table[S.PAUSED] = set(ACTING) | {S.ROLLING_BACK, S.FAILED}  # resume where it paused
    table[S.FAILED] = set(ACTING) | {S.PAUSED, S.ROLLING_BACK}  # retry the failed step
    table[S.ROLLING_BACK] = {S.ROLLED_BACK, S.FAILED, S.PAUSED}
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
