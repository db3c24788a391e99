"""The executor: runs a plan hop by hop through the state machine.

For every step it (1) moves the ``Machine`` and writes a checkpoint, (2) observes whether
the step is already done (a resumed run never redoes work: a release already at the
planned chart version, a workload already restarted by this run for this hop), (3) acts
through the ports, (4) observes again and (5) writes a checkpoint with what changed (Helm
revisions, values diff, restarted workloads). Each hop starts with the preflight checks;
an unwaived error stops the run before anything changes (state ``Failed``, stopped in
``Preflight``), with the command to resume.

Only this module moves run state. It does not import the Kubernetes client or pyhelm3: it
acts through ``ExecutorPorts``, which the CLI builds from the adapters (fakes in unit
tests).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, assert_never

import structlog

from upgrader import windows
from upgrader.audit import Notice, Transition, follow
from upgrader.catalog import Catalog
from upgrader.checkpoints import Checkpoint, CheckpointStore, Event, Mark, ReleaseRevisions, Restarted
from upgrader.dataplane import (
    Inventory,
    Key,
    Throttle,
    Verdict,
    assess,
    budget_block,
    budget_hint,
    inventory,
    next_starts,
    pods_by_namespace,
)
from upgrader.discovery import (
    carried_revision,
    chart_version_of,
    last_deployed,
    never_deployed,
    proxy_version,
    split_chart,
)
from upgrader.errors import EXIT_REFUSED, InputError, ReleaseLockedError, UpgraderError
from upgrader.gatewayapi import crd_rollback_refusal
from upgrader.gatewayapi import observe as gateway_observe
from upgrader.locking import LockLostError
from upgrader.metrics import MetricsPort, MetricsUnavailableError, Sample, describe
from upgrader.metrics import assess as assess_metrics
from upgrader.pins import PROXY_KEY, Pin, remedies, values_proxy, workload_pins
from upgrader.pins import describe as describe_pins
from upgrader.planning import (
    CONTROL_PLANE,
    CRDS,
    EXTENSIONS,
    HA_FILE,
    LEGACY,
    AdoptSplitCharts,
    Hop,
    KeepRelease,
    Plan,
    PreflightStep,
    RestartWave,
    Step,
    UpgradeRelease,
    VerifyControlPlane,
    VerifyDataPlane,
    chart_older,
    crds_would_go_back,
    default_seconds,
    ha_layers,
    hop_values,
    restart_rounds,
    step_estimate,
    step_kind,
)
from upgrader.ports import (
    Budget,
    CustomResourceDefinition,
    DataPlaneView,
    HelmRelease,
    HelmRevision,
    Pod,
    ReleaseObject,
    Workload,
)
from upgrader.preflight import CheckResult
from upgrader.spec import Spec, parse_duration
from upgrader.states import ACTING, TERMINAL, Machine, RunState, route_of
from upgrader.values import diff, switched
from upgrader.versions import major_distance

log = structlog.get_logger("upgrader.execution")
S = RunState
RESTARTED_BY = "upgrader.io/restarted-by"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


PREFLIGHT_OPTIONS = ("min_cert_days", "repo")  # run options the preflight command repeats in hints


class RunStoppedError(UpgraderError):
    """The run stopped (a failed step); the checkpoint holds where and why. Exit 1: failed."""

    exit_code = 1


class PreflightStoppedError(RunStoppedError):
    """The run stopped before a hop because preflight found errors. Exit 4."""

    exit_code = 4


class WindowClosed(Exception):  # not an error: the run pauses at a safe point
    """The maintenance window has no room for the next step (or restart); the run pauses before it.

    ``seconds`` is what ``what`` needs; ``entering`` the state of the step not entered yet (None: the
    run is inside the step, a wave holding back its next restarts).
    """

    def __init__(self, fit: windows.Fit, *, what: str, seconds: float, entering: RunState | None = None) -> None:
        super().__init__(fit.reason)
        self.fit, self.what, self.seconds, self.entering = fit, what, seconds, entering


class MetricsUnanswered(Exception):  # not an error: a gate that cannot read its metrics has not failed
    """Prometheus did not answer a wave's metric gate (after the retries); the run pauses where it is.

    A metrics source that is down says nothing about the wave, so the run neither fails nor triggers
    ``onFailure: rollback``: it ends ``Paused`` (exit 5) and ``upgrader resume`` judges the wave again.
    """

    def __init__(self, wave: str, error: MetricsUnavailableError) -> None:
        super().__init__(error.message)
        self.wave, self.error = wave, error


class WindowTooShortError(RunStoppedError):
    """No maintenance window is long enough for the next step: waiting would never end. Exit 3: refused."""

    exit_code = EXIT_REFUSED


KEPT_DURATIONS = 20  # recorded durations kept per step kind in a checkpoint


class NothingToRollBackError(UpgraderError):
    """``rollback`` of a run with nothing left to undo (already rolled back, or it changed nothing). Exit 3: refused."""

    exit_code = EXIT_REFUSED


CRD_KIND = "CustomResourceDefinition"


class ExecutorPorts(Protocol):
    """What the executor needs from the outside world."""

    def release(self, name: str, namespace: str) -> HelmRelease | None: ...

    def user_values(self, name: str, namespace: str, revision: int | None = None) -> dict[str, Any]: ...

    def history(self, name: str, namespace: str) -> list[HelmRevision]: ...  # helm history, oldest first

    def all_values(self, name: str, namespace: str) -> dict[str, Any]: ...

    def chart_defaults(self, chart: str, version: str) -> dict[str, Any]: ...

    def chart_file(self, chart: str, version: str, name: str) -> str | None: ...  # a file shipped in the chart

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
    ) -> HelmRelease: ...

    def control_plane_version(self, namespace: str) -> str | None: ...

    def control_plane_ready(self, namespace: str) -> list[str]: ...  # problems; [] when ready

    def control_plane_pods(self, namespace: str) -> list[Pod]: ...

    def crds_stored(self) -> dict[str, tuple[str, ...]]: ...  # Linkerd CRD -> storedVersions

    def crds_served(self, chart: str, version: str) -> dict[str, tuple[str, ...]]: ...  # CRD -> served versions

    def route_crds(self) -> list[CustomResourceDefinition]: ...  # the Gateway API route CRDs, with annotations

    def injector_answers(self, namespace: str) -> bool: ...

    def data_plane(self) -> DataPlaneView: ...  # namespaces, workloads, pods, budgets: one consistent copy

    def wait_for_change(self, since: int, timeout: float) -> int: ...  # watch-based; returns the new version

    def restart(self, workload: Workload, annotations: Mapping[str, str | None]) -> None: ...  # None removes

    def preflight(self, plan: Plan, hop_index: int) -> list[CheckResult]: ...

    def rollback(self, name: str, namespace: str, revision: int) -> HelmRelease: ...

    def install(
        self, name: str, chart: str, namespace: str, values: dict[str, Any], *, version: str
    ) -> HelmRelease: ...

    def release_objects(self, name: str, namespace: str) -> list[ReleaseObject]: ...  # from its manifest

    def chart_objects(
        self, chart: str, version: str, namespace: str, values: dict[str, Any]
    ) -> list[ReleaseObject]: ...  # what a chart renders (helm template)

    def adopt(self, obj: ReleaseObject, release: str, namespace: str) -> None: ...  # re-annotate for a release

    def remove_release_record(self, name: str, namespace: str) -> int: ...  # its Secrets; never its objects


class Fence(Protocol):
    """The installation lock, as the executor sees it: check we still hold it before acting."""

    def fence(self) -> None: ...  # raises when the lock was lost

    def still_held(self) -> bool: ...  # what the heartbeat already knows (no API call): not lost, lease not run out

    def tick(self) -> None: ...  # renew when due (cheap otherwise)

    def due_in(self) -> float: ...  # seconds until the next renewal is due


class _NoFence:
    def fence(self) -> None:
        return None

    def still_held(self) -> bool:
        return True

    def tick(self) -> None:
        return None

    def due_in(self) -> float:
        return math.inf


@dataclass(frozen=True)
class ReleaseBack:
    """One release a rollback returns: from its live revision to the deployed revision it goes back to."""

    name: str
    namespace: str
    from_revision: int
    from_chart: str
    from_status: str
    to_revision: int
    to_chart: str

    def __str__(self) -> str:
        return (
            f"{self.namespace}/{self.name}: revision {self.from_revision} ({self.from_chart}, {self.from_status}) "
            f"-> revision {self.to_revision} ({self.to_chart})"
        )


@dataclass(frozen=True)
class RollbackScope:
    """What one ``rollback`` does, decided before anything changes: shown for confirmation, then run."""

    where: str
    first_hop: int  # the hop rolled back (or the checkpoint's hop)
    rolled_hops: tuple[int, ...]  # the hops undone entirely once it finished
    mark: Mark | None  # the step boundary the releases return to (None: the start of the run)
    releases: tuple[ReleaseBack, ...]
    crds: str  # what happens to linkerd-crds
    restarts: tuple[Restarted, ...]  # workloads given their previous pod template back
    further: str | None  # the rollback after this one, if an earlier hop changed something

    def describe(self) -> list[str]:
        """The lines shown before a rollback asks for confirmation."""
        lines = [f"rollback of {self.where}:"]
        lines += [f"  helm rollback {r}" for r in self.releases] or ["  no release to roll back"]
        lines.append(f"  {self.crds}")
        namespaces = sorted({r.namespace for r in self.restarts})
        lines.append(
            f"  restart {len(self.restarts)} workload(s) with their previous pod template, in: {', '.join(namespaces)}"
            if namespaces
            else "  no workload to restart"
        )
        if self.further:
            lines.append(f"  {self.further}")
        return lines


def _resume_step(hop: Hop, state: RunState, recorded: int) -> int:
    """The step a resumed run re-enters: the recorded one if it runs in ``state``, else the first that does."""
    if 0 <= recorded < len(hop.steps) and hop.steps[recorded].state == state:
        return recorded
    return next((n for n, step in enumerate(hop.steps) if step.state == state), 0)


@dataclass
class Executor:
    plan: Plan
    spec: Spec
    catalog: Catalog
    ports: ExecutorPorts
    store: CheckpointStore
    checkpoint: Checkpoint
    clock: Callable[[], dt.datetime]
    namespace: str = "linkerd"
    repo: str = "linkerd"
    rollout_timeout: int = 600
    metrics: MetricsPort | None = None
    sleep: Callable[[float], None] = time.sleep
    on_progress: Callable[[str, int, int], None] | None = None  # (what, done, total)
    lock: Fence = field(default_factory=_NoFence)
    durations: Mapping[str, list[float]] = field(default_factory=dict)  # earlier runs' step durations, per kind
    _idle: bool = field(default=False, init=False, repr=False)  # the current step found nothing to do
    # each state change with the notifications it stands for (upgrader.audit.follow); never raises
    on_transition: Callable[[Transition, list[Notice]], None] | None = None

    def __post_init__(self) -> None:
        self.machine = Machine(state=self.checkpoint.state, stopped_in=self.checkpoint.stopped_in)

    # ---- bookkeeping -----------------------------------------------------------------------
    def _save(self) -> None:
        self.lock.fence()  # a run that lost the lock never writes its checkpoint over the new holder's work
        self.checkpoint.updated_at = self.clock()
        self.store.store(checkpoint=self.checkpoint)

    def _move(
        self,
        state: RunState,
        reason: str,
        *,
        resume_at: dt.datetime | None = None,
        stopped_in: RunState | None = None,
    ) -> None:
        """``stopped_in``: a run stopping before it entered a step, so that resume enters that step."""
        if self.machine.state == state:
            return
        previous = self.machine.state
        self.machine.move(state)
        if stopped_in is not None and state in (S.PAUSED, S.FAILED):
            self.machine.stopped_in = stopped_in
        self.checkpoint.state = state
        self.checkpoint.stopped_in = self.machine.stopped_in
        self.checkpoint.events.append(Event(at=self.clock(), state=state, reason=reason))
        if state in ACTING or state == S.DONE:
            self.checkpoint.mark(self.clock(), state)
        log.info("state", run_id=self.checkpoint.run_id, hop=self.checkpoint.hop, state=str(state), reason=reason)
        change = self._transition(previous, state, reason, resume_at)
        self.checkpoint.audit, kinds = follow(self.checkpoint.audit, change)
        self._save()
        if self.on_transition is not None:
            self.on_transition(change, kinds)

    def _transition(
        self, previous: RunState, state: RunState, reason: str, resume_at: dt.datetime | None
    ) -> Transition:
        cp = self.checkpoint
        hop = self.plan.hops[cp.hop] if 0 <= cp.hop < len(self.plan.hops) else None
        return Transition(
            run_id=cp.run_id,
            at=self.clock(),
            previous=previous,
            state=state,
            hop=cp.hop,
            hop_from=hop.from_ if hop else None,
            hop_to=hop.to if hop else None,
            reason=reason,
            next_command=cp.next_command,
            resume_at=resume_at,
            rolled_back_hops=tuple(cp.rolled_back_hops),
        )

    def _stop(
        self, reason: str, hint: str, kind: type[RunStoppedError] | None = None, *, stopped_in: RunState | None = None
    ) -> RunStoppedError:
        """Record why the run stops and what to do next, move it to Failed; the error to raise."""
        self.checkpoint.errors.append(reason)
        self.checkpoint.next_command = hint
        if self.machine.state in (*TERMINAL, S.FAILED):
            self._save()
        else:
            self._move(S.FAILED, reason, stopped_in=stopped_in)
        return (kind or RunStoppedError)(reason, hint=hint)

    def resume_command(self) -> str:
        """``upgrader resume RUN``, with ``--spec FILE`` when the run's spec holds what checkpoints never store."""
        spec = " --spec FILE" if self.checkpoint.spec_has_values else ""
        return f"upgrader resume {self.checkpoint.run_id}{spec}"

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> Checkpoint:
        """Run, or resume, every remaining hop; return the final checkpoint.

        Each hop's typed steps run in the plan's order; the machine follows the hop's route.
        A resumed run re-enters the step it was in (or stopped in) and goes on from there;
        every step first observes whether its work is already done. Any error inside a step
        ends the run ``Failed`` with the reason recorded, never in an acting state.
        """
        if self.machine.state in TERMINAL:
            return self.checkpoint
        first, first_step = self.checkpoint.hop, 0
        if first < len(self.plan.hops):
            self.machine.route = route_of(s.state for s in self.plan.hops[first].steps)
        if self.machine.state in (S.PAUSED, S.FAILED):
            target = self.machine.stopped_in or S.PREFLIGHT
            self.checkpoint.resume_after = None
            self._move(target, f"resumed in {target}")
        if self.machine.state in ACTING and first < len(self.plan.hops):
            first_step = _resume_step(self.plan.hops[first], self.machine.state, self.checkpoint.step)
        try:
            for index in range(first, len(self.plan.hops)):
                hop = self.plan.hops[index]
                self.checkpoint.hop = index
                self.machine.route = route_of(s.state for s in hop.steps)
                for number, step in enumerate(hop.steps):
                    if index == first and number < first_step:
                        continue
                    self.checkpoint.step = number
                    entering = f"hop {index + 1}: {hop.from_} -> {hop.to}: {step.name}"
                    if self.machine.state == S.PLANNED:  # a new run: Planned cannot pause, it enters Preflight first
                        self._move(step.state, entering)
                    self._window_gate(index, hop, step)  # before the run enters the step: a pause re-enters it
                    self._move(step.state, entering)
                    started, self._idle = self.clock(), False
                    self._step(index, hop, step)
                    if not isinstance(step, RestartWave):  # a wave records its rounds of restarts itself
                        self._record(step_kind(step), (self.clock() - started).total_seconds())
                self.checkpoint.step = 0
        except WindowClosed as closed:
            return self._pause_for_window(closed)
        except MetricsUnanswered as unanswered:
            return self._pause_for_metrics(unanswered)
        self._move(S.DONE, "every hop done")
        return self.checkpoint

    # ---- maintenance windows ---------------------------------------------------------------
    def _recorded(self, kind: str) -> list[float]:
        """Durations of ``kind`` earlier runs recorded, then this run's own."""
        return [*self.durations.get(kind, ()), *self.checkpoint.durations.get(kind, ())]

    def _estimate(self, kind: str) -> int:
        return windows.estimate(self._recorded(kind), default_seconds(kind))

    def _record(self, kind: str, seconds: float) -> None:
        """Keep how long a finished step of ``kind`` took (saved with the next checkpoint); not for a dry run
        or a step that found nothing to do (skipped, or found done by an earlier run)."""
        if self.spec.dry_run or self._idle:
            return
        kept = self.checkpoint.durations.get(kind, [])
        self.checkpoint.durations = {
            **self.checkpoint.durations,
            kind: [*kept, round(max(0.0, seconds), 1)][-KEPT_DURATIONS:],
        }

    def _wave_pending(self, index: int, hop: Hop, number: int) -> dict[str, int]:
        """Per namespace, the workloads of wave ``number`` this run has not restarted yet (observed now)."""
        wave = hop.waves[number]
        if f"{index}/{number}" in self.checkpoint.waves_done or not wave.namespaces:
            return {}
        marker = f"{self.checkpoint.run_id}/{index}"
        counts: dict[str, int] = {}
        for w in self._inventory(wave.namespaces).targets:
            if w.pod_annotations.get(RESTARTED_BY) != marker:
                counts[w.namespace] = counts.get(w.namespace, 0) + 1
        return counts

    def step_estimate(self, index: int, hop: Hop, step: Step) -> int:
        """Seconds the step should take (``planning.step_estimate``), from what is observed now: a wave's
        workloads not restarted yet, 0 for a release already at its chart version."""
        if isinstance(step, UpgradeRelease | AdoptSplitCharts) and step.chart_version is not None:
            current = self.ports.release(step.release, step.namespace or self.namespace)
            if current is not None and current.chart_version == step.chart_version and current.status == "deployed":
                return 0
        wave = hop.waves[step.wave] if isinstance(step, RestartWave) else None
        pending = self._wave_pending(index, hop, step.wave) if isinstance(step, RestartWave) else None
        recorded = {k: self._recorded(k) for k in {step_kind(step), "restart"}}
        return step_estimate(step, wave, self.spec, recorded, pending)

    def _window_gate(self, index: int, hop: Hop, step: Step) -> None:
        """Before a step: raise WindowClosed unless its estimate (and the margin) fits in what is left of the window.
        A step with nothing to do never pauses the run."""
        rules = self.spec.window_rules()
        if not rules:
            return
        seconds = self.step_estimate(index, hop, step)
        what = f"the next step ({step.name})"
        fit = windows.fits(rules, self.clock(), seconds, what) if seconds > 0 else windows.Fit(True)
        log.info("window-gate", step=step.name, estimate=seconds, fits=fit.ok, reason=fit.reason or "fits")
        if not fit.ok:
            raise WindowClosed(fit, what=what, seconds=seconds, entering=step.state)

    def _restart_fits(self, r: _Rollout) -> windows.Fit:
        """Before each restart of a wave: one more round of restarts fits in what is left of the window."""
        rules = self.spec.window_rules()
        if not rules or r.record_hop is None:  # a rollback's restarts are never held back
            return windows.Fit(True)
        seconds = self._estimate("restart")
        return windows.fits(rules, self.clock(), seconds, f"the next restart of {r.label}")

    def _pause_for_window(self, closed: WindowClosed) -> Checkpoint:
        """Pause at a safe point (before a step, or between restarts once in-flight ones finished); a step no
        window can ever hold ends the run Failed instead (exit 3), naming a wider window as the way on."""
        fit, resume = closed.fit, self.resume_command()
        rules = self.spec.window_rules()
        too_long = windows.capacity(rules, self.clock()).too_long(closed.what, closed.seconds)
        if too_long is not None:
            raise self._stop(
                too_long,
                f'give a window long enough for it: {resume} --window "DAYS HH:MM-HH:MM ZONE" '
                "(or widen the spec's window)",
                WindowTooShortError,
                stopped_in=closed.entering,
            )
        opening = fit.next_opening
        return self._pause(
            "window-pause",
            f"{fit.reason}; {fit.next_text()}",
            f"{resume} --wait-for-window",
            resume_at=opening.start if opening else None,
            stopped_in=closed.entering,
        )

    def _pause_for_metrics(self, unanswered: MetricsUnanswered) -> Checkpoint:
        """Prometheus did not answer a wave's gate: pause in the wave (not Failed, so no ``onFailure``);
        resume re-enters it, and its gate reads the metrics again."""
        reason = (
            f"wave {unanswered.wave}: metric gates cannot judge the wave: {unanswered.error.message}; "
            "resume once Prometheus answers"
        )
        return self._pause("metrics-pause", reason, self.resume_command())

    def _pause(
        self,
        event: str,
        reason: str,
        next_command: str,
        *,
        resume_at: dt.datetime | None = None,
        stopped_in: RunState | None = None,
    ) -> Checkpoint:
        """End the run ``Paused`` with the reason and the command that goes on (the CLI exits 5)."""
        self.checkpoint.resume_after = resume_at
        self.checkpoint.next_command = next_command
        log.info(event, run_id=self.checkpoint.run_id, reason=reason, next=next_command)
        self._move(S.PAUSED, reason, resume_at=resume_at, stopped_in=stopped_in)
        return self.checkpoint

    def already_at_target(self) -> bool:
        """The control plane is at the plan's target and every planned workload runs its proxy."""
        if not self.plan.hops:
            return False
        last = self.plan.hops[-1]
        if self.ports.control_plane_version(self.namespace) != last.to:
            return False
        for step in last.steps:
            if isinstance(step, UpgradeRelease | AdoptSplitCharts) and step.chart_version is not None:
                release = self.ports.release(step.release, step.namespace)
                if release is None or release.chart_version != step.chart_version or release.status != "deployed":
                    return False
            if isinstance(step, AdoptSplitCharts) and self.ports.release(step.legacy_release, step.legacy_namespace):
                return False  # the linkerd2 record must be gone too
        namespaces = [ns for w in last.waves for ns in w.namespaces]
        inv = self._inventory(namespaces)
        return all(set(inv.proxies.get(w.key, {})) <= {last.to, "unknown"} for w in inv.targets)

    def finish_elsewhere(self, reason: str) -> Checkpoint:
        """End a resumed run whose work is already done: every remaining state is passed as observed
        done (each move legal on its hop's route), to Done, with nothing acted on."""
        log.info("already-done", run_id=self.checkpoint.run_id, reason=reason)
        if self.machine.state in (S.PAUSED, S.FAILED):
            self._move(self.machine.stopped_in or S.PREFLIGHT, f"resumed: {reason}")
        first = self.checkpoint.hop
        for index in range(first, len(self.plan.hops)):
            self.checkpoint.hop = index
            route = route_of(s.state for s in self.plan.hops[index].steps)
            self.machine.route = route
            here = self.machine.state
            start = route.index(here) + 1 if here in route and index == first else 0
            for state in route[start:]:
                self._move(state, f"observed done: {reason}")
        self._move(S.DONE, reason)
        return self.checkpoint

    def _step(self, index: int, hop: Hop, step: Step) -> None:
        """Run one step; whatever stops it is recorded in the checkpoint as the reason."""
        resume = self.resume_command()
        try:
            self._dispatch(index, hop, step, resume)  # every action inside fences itself
        except (RunStoppedError, LockLostError, WindowClosed, MetricsUnanswered):
            raise  # a run that lost its lock writes nothing more: the other run owns the installation
        except UpgraderError as exc:
            then = f"{resume} (or upgrader rollback {self.checkpoint.run_id})"
            raise self._stop(
                f"hop {index + 1}, step {step.name}: {exc.message}",
                f"{exc.hint}; then {then}"  # a passing failure that outlasted the retries: say how to go on
                if exc.retryable and exc.hint and resume not in exc.hint
                else exc.hint or f"fix the cause, then {then}",
            ) from exc
        except Exception as exc:
            self._stop(
                f"hop {index + 1}, step {step.name}: internal error {type(exc).__name__}: {exc}",
                f"report this; then {resume} (or upgrader rollback {self.checkpoint.run_id})",
            )
            raise

    def _dispatch(self, index: int, hop: Hop, step: Step, resume: str) -> None:
        if isinstance(step, PreflightStep):
            self._preflight(index, hop, resume)
        elif isinstance(step, UpgradeRelease):
            if step.chart_version is None:
                log.info("step-skipped", step=step.name, reason="no chart version offered")
                self._idle = True
                return
            self._helm_step(
                step.release,
                step.chart or step.release,
                step.chart_version,
                values=hop if step.send_values else None,
                namespace=step.namespace,
                switches=hop.crds_values if step.release == CRDS else None,
            )
        elif isinstance(step, KeepRelease):
            self._idle = True
            if self.ports.release(step.release, step.namespace) is None:
                log.warning("kept-release-missing", release=step.release, namespace=step.namespace)
            log.info("release-kept", release=step.release, namespace=step.namespace)
        elif isinstance(step, AdoptSplitCharts):
            self._adopt(hop, step)
        elif isinstance(step, VerifyControlPlane):
            self._verify_control_plane(hop, resume)
        elif isinstance(step, RestartWave):
            self._restart_wave(index, hop, step.wave, resume)
        elif isinstance(step, VerifyDataPlane):
            self._verify_data_plane(hop, resume)
        else:  # the Step union is closed: mypy refuses a new step type until it is dispatched here
            assert_never(step)

    def _preflight(self, index: int, hop: Hop, resume: str) -> None:
        sliced = self.plan.model_copy(update={"hops": self.plan.hops[index:]})
        blocking = [r for r in self.ports.preflight(sliced, index) if r.result == "error" and not r.waived]
        if blocking:
            for r in blocking:  # what failed and why, in the run's own log (a Job's pod log included)
                log.error("preflight-check", run_id=self.checkpoint.run_id, id=r.id, message=r.message, hint=r.hint)
            ids = ", ".join(r.id for r in blocking)
            raise self._stop(
                f"preflight failed before hop {index + 1}: {ids}",
                f"fix them ({self.preflight_command(hop)}) or waive the ids in the spec; then {resume}",
                PreflightStoppedError,
            )

    def preflight_command(self, hop: Hop) -> str:
        """The preflight command that repeats this run's checks (with the run's options)."""
        options = self.checkpoint.options
        extra = "".join(
            f" --{key.replace('_', '-')} {value}" for key, value in sorted(options.items()) if key in PREFLIGHT_OPTIONS
        )
        return f"upgrader preflight --to {hop.to}{extra}"

    # ---- rollback --------------------------------------------------------------------------
    def rollback_scope(
        self, *, include_crds: bool = False, to_checkpoint: int | None = None, hop: int | None = None
    ) -> RollbackScope:
        """Decide what one rollback does, from the checkpoint and the releases as they are; nothing changes.

        Without ``to_checkpoint`` it undoes one hop, so at most one major, as ``plan`` allows: ``hop``
        (the failed hop, for ``onFailure: rollback``) or else the run's last hop that changed anything
        and was not rolled back yet. Its releases go back to the revisions they had when that hop
        started, then the workloads it restarted get their previous pod template. ``to_checkpoint``
        returns to any recorded step boundary instead. Each release's target is the newest revision
        at or before that point that was ever deployed (never a ``failed`` one, from helm history).
        Refused (exit 3) when nothing is left to roll back; bad input (exit 2) past the 2.12 chart split,
        for a checkpoint inside a hop already rolled back (it lies ahead of the installation now), and when a
        release would move forward or, one hop back, the control plane more than one major (see
        ``_refuse_forward``).
        """
        cp, hops = self.checkpoint, self.plan.hops
        done = set(cp.rolled_back_hops)
        mark: Mark | None
        if to_checkpoint is not None:
            mark = cp.find_mark(to_checkpoint)
            if mark.hop in done:  # that hop's work is undone: its checkpoints now lie ahead of the installation
                raise InputError(
                    f"checkpoint {mark.id} is in hop {mark.hop + 1} ({hops[mark.hop].from_} -> {hops[mark.hop].to}), "
                    f"which a rollback of run {cp.run_id} already undid: returning to it would move the "
                    "installation forward",
                    hint=f"roll back further with upgrader rollback {cp.run_id}, or go forward with a new run "
                    f"(upgrader plan --to {hops[mark.hop].to}); upgrader status {cp.run_id} lists the checkpoints",
                )
            first, where = mark.hop, f"checkpoint {mark.id} (hop {mark.hop + 1}, {mark.state})"
            restarts = cp.restarted[mark.restarted :]
            partial = mark != self._hop_start(mark.hop)  # the hop's earlier steps stay for the next rollback
        else:
            found = self._hop_to_roll_back(hop, done)
            if found is None:
                already = cp.state == S.ROLLED_BACK or bool(done)
                if hop is not None:
                    message = f"hop {hop + 1} of run {cp.run_id} changed nothing that a rollback could undo"
                elif already:
                    message = f"run {cp.run_id} is already rolled back to where it started"
                else:
                    message = f"run {cp.run_id} changed nothing that a rollback could undo"
                raise NothingToRollBackError(message, hint=f"upgrader status {cp.run_id}")
            first, mark, partial = found, self._hop_start(found), False
            h = hops[first]
            where = f"hop {first + 1} ({h.from_} -> {h.to}), back to {h.from_}"
            restarts = [r for r in cp.restarted if r.hop >= first]
        self._refuse_rollback_past_split(first)
        crds = self.ports.release(CRDS, cp.releases[CRDS].namespace) if CRDS in cp.releases else None
        if include_crds and CRDS in cp.releases:
            crds_line = (
                f"{CRDS}: rolled back too (--include-crds), if the older chart serves every stored version and "
                "neither takes back, downgrades nor deletes a Gateway API CRD"
            )
        elif crds is not None:
            crds_line = f"{CRDS}: kept at {crds.chart_version} (CRDs are not rolled back unless --include-crds)"
        else:
            crds_line = f"{CRDS}: untouched"
        seen: dict[tuple[str, str, str], Restarted] = {}
        for r in restarts:
            seen.setdefault((r.kind, r.namespace, r.name), r)  # the first: the template before that point
        earlier = first if partial else self._hop_to_roll_back(None, done | set(range(first, len(hops))))
        further = None
        if earlier is not None and earlier < len(hops):
            further = (
                f"then `upgrader rollback {cp.run_id}` again goes one more hop back "
                f"(hop {earlier + 1}, to {hops[earlier].from_})"
            )
        return RollbackScope(
            where=where,
            first_hop=first,
            rolled_hops=tuple(range(first + (1 if partial else 0), len(hops))),
            mark=mark,
            releases=tuple(self._release_targets(include_crds, mark, one_hop=to_checkpoint is None)),
            crds=crds_line,
            restarts=tuple(seen.values()),
            further=further,
        )

    def _hop_start(self, index: int) -> Mark | None:
        """The checkpoint taken when hop ``index`` started (its first step boundary)."""
        return next((m for m in self.checkpoint.marks if m.hop == index), None)

    def _revisions_at(self, mark: Mark | None) -> dict[str, int | None]:
        return {
            name: (mark.revisions.get(name, record.before) if mark else record.before)
            for name, record in self.checkpoint.releases.items()
        }

    def _hop_changed(self, index: int) -> bool:
        """Whether hop ``index`` changed a release (a failed helm revision counts) or restarted a workload."""
        cp = self.checkpoint
        if any(r.hop == index for r in cp.restarted):
            return True
        start = self._revisions_at(self._hop_start(index))
        after = self._hop_start(index + 1)
        if after is not None and index < cp.hop:
            end = self._revisions_at(after)
        else:  # the hop the run is in (or ended in): what helm says now
            live = {name: self.ports.release(name, record.namespace) for name, record in cp.releases.items()}
            end = {name: (rel.revision if rel else None) for name, rel in live.items()}
        return any(end.get(name) != start.get(name) for name in set(start) | set(end))

    def _hop_to_roll_back(self, only: int | None, done: set[int]) -> int | None:
        """The hop a rollback undoes: ``only`` (not yet undone), else the last changed hop before any undone."""
        hops = self.plan.hops
        if not hops:
            return None
        if only is not None:  # a hop that changed nothing has nothing to undo (a rollback would report one)
            return only if only not in done and only < len(hops) and self._hop_changed(only) else None
        last = min([self.checkpoint.hop, len(hops) - 1, *(h - 1 for h in done)])
        return next((i for i in range(last, -1, -1) if i not in done and self._hop_changed(i)), None)

    def _release_targets(self, include_crds: bool, mark: Mark | None, *, one_hop: bool) -> list[ReleaseBack]:
        """Releases in the reverse order the run changed them: extensions, then the control plane
        (linkerd-control-plane or, before 2.12, linkerd2), then the CRDs only when asked.

        A rollback only goes back: a target chart newer than the live one is refused (bad input), and
        so, for a one-hop rollback, is a control-plane target more than one major below the live chart
        (both possible when a release was changed outside the tool, or by an earlier rollback).
        """
        cp = self.checkpoint
        touched = [n for n in cp.releases if n != CRDS]
        order = [n for n in touched if n in EXTENSIONS] + [n for n in touched if n not in EXTENSIONS]
        if include_crds and CRDS in cp.releases:
            order.append(CRDS)
        out = []
        for name in order:
            record = cp.releases[name]
            wanted = mark.revisions.get(name, record.before) if mark else record.before
            current = self.ports.release(name, record.namespace)
            if wanted is None or current is None:
                continue
            target = last_deployed(self.ports.history(name, record.namespace), at_most=wanted)
            if target is None:
                raise UpgraderError(
                    f"release {record.namespace}/{name} has no deployed revision at or before {wanted} to roll back to",
                    hint=f"helm history {name} -n {record.namespace}; roll it back by hand (helm rollback {name} "
                    f"<rev> -n {record.namespace})",
                )
            if current.revision == target.revision:
                continue
            back = ReleaseBack(
                name=name,
                namespace=record.namespace,
                from_revision=current.revision,
                from_chart=current.chart_version,
                from_status=current.status,
                to_revision=target.revision,
                to_chart=chart_version_of(target, current.chart_name),
            )
            self._refuse_forward(back, current.chart_name, one_hop=one_hop)
            out.append(back)
        return out

    def _refuse_forward(self, back: ReleaseBack, chart_name: str, *, one_hop: bool) -> None:
        """Bad input when ``back`` would move its release forward, or (one hop) the control plane over a major."""
        where = f"{back.namespace}/{back.name}"
        by_hand = (
            f"helm history {back.name} -n {back.namespace}; if it was changed outside upgrader, roll it back by hand "
            f"(helm rollback {back.name} <rev> -n {back.namespace}), one major at a time"
        )
        if chart_older(back.from_chart, back.to_chart):
            raise InputError(
                f"rolling back {where} to revision {back.to_revision} ({back.to_chart}) would move it forward: "
                f"it runs {back.from_chart} (revision {back.from_revision})",
                hint=by_hand,
            )
        if not one_hop or back.name not in (CONTROL_PLANE, LEGACY):
            return
        live = self.catalog.release_for_chart(chart_name, back.from_chart)
        target = self.catalog.release_for_chart(chart_name, back.to_chart)
        if live is not None and target is not None and major_distance(target, live) > 1:
            raise InputError(
                f"rolling back {where} from {back.from_chart} ({live}) to {back.to_chart} ({target}) would go "
                f"{major_distance(target, live)} majors back; a rollback goes one major back at most",
                hint=by_hand,
            )

    def rollback(
        self, *, include_crds: bool = False, to_checkpoint: int | None = None, hop: int | None = None
    ) -> Checkpoint:
        """Run the rollback ``rollback_scope`` decides (one hop back, or to a checkpoint).

        Any error while rolling back ends ``Failed`` (stopped in ``RollingBack``) with its reason and
        the command to try again; an interrupt ends ``Paused``. A run never stays ``RollingBack``.
        """
        scope = self.rollback_scope(include_crds=include_crds, to_checkpoint=to_checkpoint, hop=hop)
        if self.machine.state in ACTING:  # an interrupted run (killed mid-step) is paused first
            self._move(S.PAUSED, "interrupted run, rollback requested")
        self._move(S.ROLLING_BACK, f"rollback of {scope.where} requested")
        again = f"upgrader rollback {self.checkpoint.run_id}"
        again += f" --to-checkpoint {to_checkpoint}" if to_checkpoint is not None else ""
        again += " --include-crds" if include_crds else ""
        try:
            self._roll_back(scope, include_crds=include_crds, again=again)
        except (RunStoppedError, LockLostError):
            raise
        except UpgraderError as exc:
            raise self._stop(
                f"rollback of {scope.where}: {exc.message}", exc.hint or f"fix the cause, then {again}"
            ) from exc
        except KeyboardInterrupt:
            self.checkpoint.next_command = again
            self._move(S.PAUSED, f"interrupted while rolling back {scope.where}")
            raise
        except Exception as exc:
            self._stop(
                f"rollback of {scope.where}: internal error {type(exc).__name__}: {exc}", f"report this; then {again}"
            )
            raise
        self.checkpoint.rolled_back_hops = sorted(set(self.checkpoint.rolled_back_hops) | set(scope.rolled_hops))
        self.checkpoint.next_command = scope.further
        self._move(S.ROLLED_BACK, f"rolled back {scope.where}")
        return self.checkpoint

    def _refuse_rollback_past_split(self, first_hop: int) -> None:
        split = next((i for i, h in enumerate(self.plan.hops) if h.kind == "chart-split"), None)
        started = any(
            name in self.checkpoint.releases and self.checkpoint.releases[name].before is None
            for name in (CRDS, CONTROL_PLANE)
        )
        if split is not None and started and first_hop <= split:
            raise InputError(
                f"run {self.checkpoint.run_id} went into the 2.12 chart split; rolling back past it would need "
                "the linkerd2 release it replaced",
                hint=f"roll back to a checkpoint after hop {split + 1} (upgrader status {self.checkpoint.run_id}), "
                "or finish the split with upgrader resume and restore 2.11 from a backup",
            )

    def _roll_back(self, scope: RollbackScope, *, include_crds: bool, again: str) -> None:
        if include_crds and CRDS in self.checkpoint.releases:
            self._check_crd_rollback(scope.mark.charts.get(CRDS) if scope.mark else None)
            back = next((r for r in scope.releases if r.name == CRDS), None)
            if back is not None:
                self._check_gateway_rollback(back)
        for item in scope.releases:
            record = self.checkpoint.releases[item.name]
            log.info("helm-rollback", release=item.name, to_revision=item.to_revision, from_revision=item.from_revision)
            self.lock.fence()
            after = self.ports.rollback(item.name, item.namespace, item.to_revision)
            record.after.append(after.revision)
            record.charts_after.append(after.chart_version)
            self._save()
        # Each workload gets its pod template back as it was before (the restart annotations it had):
        # Deployments return to their old ReplicaSet, whose pods the (rolled back) injector meshes.
        live = {w.key: w for w in self.ports.data_plane().workloads}
        items = [
            (
                live[r.kind, r.namespace, r.name],
                {RESTARTED_AT: r.previous_restarted_at, RESTARTED_BY: r.previous_restarted_by},
            )
            for r in scope.restarts
            if (r.kind, r.namespace, r.name) in live
        ]
        self._roll("rollback", items, version=None, record_hop=None, resume=again)
        log.info("rolled-back", where=scope.where, releases=len(scope.releases), restarted_again=len(items))

    def _check_crd_rollback(self, version: str | None) -> None:
        """Refuse to roll linkerd-crds back if the older chart stops serving a version still stored."""
        record = self.checkpoint.releases[CRDS]
        version = version or record.chart_before or (self.plan.from_ and self._charts_of(self.plan.from_).get(CRDS))
        if not version:
            raise self._stop(
                "cannot tell which linkerd-crds chart the run started from",
                "roll back without --include-crds (the default keeps the CRDs)",
            )
        served = self.ports.crds_served(f"{self.repo}/{CRDS}", version)
        lost = [
            f"{name} stores {', '.join(sorted(set(stored) - set(served[name])))}"
            for name, stored in sorted(self.ports.crds_stored().items())
            if name in served and set(stored) - set(served[name])
        ]
        if lost:
            raise self._stop(
                f"linkerd-crds {version} does not serve versions still stored: {'; '.join(lost)}",
                "roll back without --include-crds (the default keeps the CRDs)",
            )

    def _check_gateway_rollback(self, back: ReleaseBack) -> None:
        """Refuse to roll linkerd-crds back when its target revision would take back, downgrade or delete a
        Gateway API CRD (``gatewayapi.crd_rollback_refusal``): after a hand-over they are no longer Linkerd's."""
        target = self.catalog.release_for_chart(CRDS, back.to_chart)
        info = self.catalog.major(target.major) if target is not None else None
        manifest = {o.name for o in self.ports.release_objects(CRDS, back.namespace) if o.kind == CRD_KIND}
        reason = crd_rollback_refusal(
            gateway_observe(self.ports.route_crds(), {CRDS: manifest}),
            info.gateway_api if info is not None else None,
            self.ports.user_values(CRDS, back.namespace, revision=back.to_revision),
            release=CRDS,
            namespace=back.namespace,
            target=f"{back.to_chart} (revision {back.to_revision})",
            known=target is not None,
        )
        if reason is not None:
            raise self._stop(
                f"{reason}; the Gateway API CRDs stay as they are only if linkerd-crds is kept",
                f"roll back without --include-crds (upgrader rollback {self.checkpoint.run_id}): linkerd-crds and "
                "the Gateway API CRDs stay as they are",
            )

    def _charts_of(self, release: str) -> dict[str, str]:
        offering = {str(v): dict(r.charts) for v, r in self.catalog.releases_by_version().items()}
        return offering.get(release, {})

    # ---- helm steps ------------------------------------------------------------------------
    def _helm_step(
        self,
        name: str,
        chart: str,
        version: str,
        *,
        values: Hop | None,
        namespace: str | None = None,
        switches: dict[str, Any] | None = None,
    ) -> None:
        ns = namespace or self.namespace
        current = self.ports.release(name, ns)
        if current is None:
            raise self._stop(
                f"release {ns}/{name} is not installed",
                "upgrader never installs a missing release; install it with helm first",
            )
        record = self.checkpoint.releases.setdefault(
            name, ReleaseRevisions(namespace=ns, before=current.revision, chart_before=current.chart_version)
        )
        if current.chart_version == version and current.status == "deployed":
            log.info("step-done-already", release=name, chart_version=version, revision=current.revision)
            self._idle = True
            return
        if name == CRDS and crds_would_go_back(current.chart_version, version):
            note = f"{CRDS} kept at {current.chart_version}: the planned {version} is older (CRDs never move back)"
            log.warning("crds-kept", installed=current.chart_version, planned=version)
            if note not in self.checkpoint.reported:
                self.checkpoint.reported.append(note)
            self._save()
            return
        sent: dict[str, Any] = {}
        reset, reuse = False, False
        if values is not None:
            user, strategy, installed = self._carried_values(name, ns)
            sent, reset, reuse = self._values_for(
                values, name, ns, chart, version, user=user, installed=installed, strategy=strategy
            )
        elif switches:  # linkerd-crds with the plan's Gateway API switches (upgrader.gatewayapi)
            user, _, _ = self._carried_values(name, ns)
            out = switched(user, switches, target_defaults=self.ports.chart_defaults(f"{self.repo}/{chart}", version))
            changes = diff(self.ports.all_values(name, ns), out.effective)
            self.checkpoint.values_diffs[f"{self.checkpoint.hop}/{chart}"] = changes
            log.info("values", release=name, strategy="reset-then-reuse", changed=len(changes), switches=switches)
            self._save()
            sent, reset, reuse = out.values, out.reset_values, out.reuse_values
        log.info("helm-upgrade", release=name, namespace=ns, chart_version=version, revision=current.revision)
        self.lock.fence()
        try:
            after = self.ports.upgrade(
                name, f"{self.repo}/{chart}", ns, sent, version=version, reset_values=reset, reuse_values=reuse
            )
        except ReleaseLockedError as exc:
            raise self._stop(
                f"release {ns}/{name} is locked by another helm operation (pending-*)",
                f"if no helm command is running, roll it back to its last deployed revision (helm history "
                f"{name} -n {ns}; helm rollback {name} <rev> -n {ns}); then upgrader resume "
                f"{self.checkpoint.run_id}",
            ) from exc
        except UpgraderError as exc:
            if exc.retryable:
                raise
            raise self._stop(
                f"helm upgrade of {ns}/{name} to {version} failed: {exc.message}",
                f"helm history {name} -n {ns}; then upgrader resume {self.checkpoint.run_id} or "
                f"upgrader rollback {self.checkpoint.run_id}",
            ) from exc
        observed = self.ports.release(name, ns)
        if observed is None or observed.chart_version != version or observed.status != "deployed":
            raise self._stop(
                f"release {ns}/{name} is not deployed at {version} after the upgrade "
                f"({observed.status if observed else 'missing'})",
                f"helm history {name} -n {ns}; upgrader rollback {self.checkpoint.run_id}",
            )
        record.after.append(after.revision)
        record.charts_after.append(observed.chart_version)
        self._save()

    def _carried_values(self, name: str, ns: str) -> tuple[dict[str, Any], str | None, tuple[str, str]]:
        """The user values to carry, the strategy they need, and the chart of the revision they are from.

        From ``carried_revision``: the last deployed revision. A failed revision holds the values that
        made it fail (an unschedulable nodeSelector): they are not carried, and neither may helm reuse
        them (``reuse`` becomes ``reset-then-reuse``). The chart is the one whose values-ha.yaml those
        values hold (HA layering takes that file out of them). Never deployed: the run stops.
        """
        history = self.ports.history(name, ns)
        carried = carried_revision(history)
        if carried is None:
            error = never_deployed(name, ns, history, then=f"upgrader resume {self.checkpoint.run_id}")
            raise self._stop(error.message, error.hint or "")
        chart = split_chart(carried.chart)
        current = max(history, key=lambda r: r.revision)
        if current.revision == carried.revision:
            return self.ports.user_values(name, ns, carried.revision), None, chart
        log.warning(
            "values-from-deployed-revision",
            release=name,
            revision=carried.revision,
            skipped_revision=current.revision,
            status=current.status,
        )
        strategy = "reset-then-reuse" if self.spec.values.strategy == "reuse" else None
        return self.ports.user_values(name, ns, carried.revision), strategy, chart

    def _values_for(
        self,
        hop: Hop,
        name: str,
        ns: str,
        chart: str,
        version: str,
        *,
        user: dict[str, Any],
        installed: tuple[str, str] | None,
        strategy: str | None = None,
    ) -> tuple[dict[str, Any], bool, bool]:
        """The hop's values for the control-plane chart; the redacted diff goes to the checkpoint.

        ``installed`` is the chart of the revision ``user`` comes from: whose values-ha.yaml they hold (HA).
        """
        spec = self.spec
        if strategy is not None and strategy != spec.values.strategy:
            spec = spec.model_copy(update={"values": spec.values.model_copy(update={"strategy": strategy})})
        ha_target, ha_installed = ha_layers(
            hop, spec, installed, lambda c, v: self.ports.chart_file(f"{self.repo}/{c}", v, HA_FILE)
        )
        out = hop_values(
            hop,
            spec,
            self.catalog,
            user_values=user,
            target_defaults=self.ports.chart_defaults(f"{self.repo}/{chart}", version),
            ha_target=ha_target,
            ha_installed=ha_installed,
        )
        self.checkpoint.values_diff = diff(self.ports.all_values(name, ns), out.effective)
        self.checkpoint.values_diffs[f"{self.checkpoint.hop}/{chart}"] = self.checkpoint.values_diff
        log.info(
            "values",
            release=name,
            strategy=self.spec.values.strategy,
            changed=len(self.checkpoint.values_diff),
            moved=out.migration.moved,
            dropped=out.migration.dropped,
            ha_values="target" if out.ha_values else "none",
            ha_taken_out=len(out.ha_removed),
        )
        self._save()
        return out.values, out.reset_values, out.reuse_values

    # ---- the 2.12 chart split ----------------------------------------------------------------
    def _adopt(self, hop: Hop, step: AdoptSplitCharts) -> None:
        """Hand the linkerd2 release's objects to ``step.release`` and install it at the hop's chart.

        Observed first: a release already deployed at the chart version is done. The values are
        computed and the new chart rendered before anything is touched; then exactly the linkerd2
        objects that chart renders are re-annotated for it, and it is installed (upgraded, when an
        earlier attempt left it failed). The control-plane part installs with the linkerd2
        release's user values, migrated, and then removes the linkerd2 release record (its
        Secrets), never its objects.
        """
        ns, legacy, legacy_ns = step.namespace, step.legacy_release, step.legacy_namespace
        version = step.chart_version
        if version is None:
            raise self._stop(f"no {step.release} chart is offered for {hop.to}", "add the chart repository")
        current = self.ports.release(step.release, ns)
        if current is not None and current.chart_version == version and current.status == "deployed":
            log.info("step-done-already", release=step.release, chart_version=version)
            self._idle = True
            if step.part == "control-plane":
                self._remove_legacy(legacy, legacy_ns)
            return
        old = self.ports.release(legacy, legacy_ns)
        if old is not None:  # recorded so status shows where the run started
            self.checkpoint.releases.setdefault(
                legacy, ReleaseRevisions(namespace=legacy_ns, before=old.revision, chart_before=old.chart_version)
            )
        chart = f"{self.repo}/{step.chart or step.release}"
        values: dict[str, Any] = {}
        if step.part == "control-plane":
            user: dict[str, Any] = {}
            installed: tuple[str, str] | None = None
            if old is not None:
                user, _, installed = self._carried_values(legacy, legacy_ns)
            # helm install has no values to reuse: always the migrated user values plus the overrides
            values, _, _ = self._values_for(
                hop,
                legacy,
                legacy_ns,
                step.chart or step.release,
                version,
                user=user,
                installed=installed,
                strategy="reset-then-reuse",
            )
        self._hand_over(hop, step, chart, values, legacy_present=old is not None)
        self.checkpoint.releases.setdefault(step.release, ReleaseRevisions(namespace=ns, before=None))
        self._save()  # fenced: the install below acts on it
        try:
            if current is None:
                after = self.ports.install(step.release, chart, ns, values, version=version)
            else:  # an install that failed or was interrupted: upgrade it (its objects are already adopted)
                after = self.ports.upgrade(
                    step.release, chart, ns, values, version=version, reset_values=True, reuse_values=False
                )
        except ReleaseLockedError as exc:
            raise self._stop(
                f"release {ns}/{step.release} is locked by another helm operation (pending-*)",
                f"if no helm command is running, roll it back or uninstall it (helm history {step.release} -n {ns}; "
                f"its objects stay annotated); then upgrader resume {self.checkpoint.run_id}",
            ) from exc
        observed = self.ports.release(step.release, ns)
        if observed is None or observed.chart_version != version or observed.status != "deployed":
            raise self._stop(
                f"release {ns}/{step.release} is not deployed at {version} after the install "
                f"({observed.status if observed else 'missing'})",
                f"helm history {step.release} -n {ns}; then upgrader resume {self.checkpoint.run_id}",
            )
        mine = self.checkpoint.releases[step.release]
        mine.after.append(after.revision)
        mine.charts_after.append(observed.chart_version)
        self._save()
        if step.part == "control-plane":
            self._remove_legacy(legacy, legacy_ns)

    def _hand_over(
        self, hop: Hop, step: AdoptSplitCharts, chart: str, values: dict[str, Any], *, legacy_present: bool
    ) -> None:
        """Re-annotate for ``step.release`` exactly the linkerd2 objects its chart renders; report what no
        2.12 chart renders (it stays the linkerd2 release's, untouched)."""
        ns, legacy, legacy_ns = step.namespace, step.legacy_release, step.legacy_namespace
        version = step.chart_version or ""
        renders = {(o.kind, o.name) for o in self.ports.chart_objects(chart, version, ns, values)}
        objects = self.ports.release_objects(legacy, legacy_ns) if legacy_present else []
        wanted = [o for o in objects if (o.kind, o.name) in renders]
        for obj in wanted:
            self.lock.fence()
            self.ports.adopt(obj, step.release, ns)
        log.info("adopted", release=step.release, objects=len(wanted), from_release=f"{legacy_ns}/{legacy}")
        if step.part != "control-plane" or not legacy_present:
            return
        crds = {
            (o.kind, o.name) for o in self.ports.chart_objects(f"{self.repo}/{CRDS}", self._crds_version(hop), ns, {})
        }
        left = [str(o) for o in objects if (o.kind, o.name) not in renders | crds]
        if left:
            note = f"2.12 chart split: in no 2.12 chart, left as they are: {', '.join(left)}"
            log.warning("split-leftovers", objects=left)
            if note not in self.checkpoint.reported:
                self.checkpoint.reported.append(note)

    @staticmethod
    def _crds_version(hop: Hop) -> str:
        return hop.charts.get(CRDS, "")

    def _remove_legacy(self, legacy: str, legacy_ns: str) -> None:
        if self.ports.release(legacy, legacy_ns) is None:
            return
        self.lock.fence()
        removed = self.ports.remove_release_record(legacy, legacy_ns)
        log.info("legacy-release-record-removed", release=f"{legacy_ns}/{legacy}", secrets=removed)

    def _verify_control_plane(self, hop: Hop, resume: str) -> None:
        problems = self.ports.control_plane_ready(self.namespace)
        proxy = values_proxy(self.plan.pins) or hop.to  # the values' proxy pin holds the control plane's proxies too
        stale = sorted(p.name for p in self.ports.control_plane_pods(self.namespace) if proxy_version(p) != proxy)
        if stale:
            pinned = f" (pinned by {PROXY_KEY})" if proxy != hop.to else ""
            problems.append(f"control-plane pods not on {proxy}{pinned}: {', '.join(stale[:6])}")
        version = self.ports.control_plane_version(self.namespace)
        if version != hop.to:
            problems.append(f"linkerd-config reports {version}, expected {hop.to}")
        if not problems and not self.ports.injector_answers(self.namespace):
            problems.append("the proxy injector did not mesh a dry-run pod")
        if problems:
            raise self._stop(
                f"control plane not healthy at {hop.to}: {'; '.join(problems)}",
                f"kubectl -n {self.namespace} get pods; then {resume} or upgrader rollback {self.checkpoint.run_id}",
            )

    # ---- data plane: waves, throttled restarts, health gates -------------------------------------
    def _restart_wave(self, index: int, hop: Hop, number: int, resume: str) -> None:
        """One wave: restart its workloads, throttled and gated, bake, then the wave's gates."""
        marker = f"{self.checkpoint.run_id}/{index}"
        wave = hop.waves[number]
        tag = f"{index}/{number}"
        if tag in self.checkpoint.waves_done:
            return
        if not wave.namespaces:  # the plan warned: nothing meshed matched it
            log.warning("wave-empty", hop=index + 1, wave=wave.name, reason="no meshed namespace in this wave")
            self.checkpoint.waves_done.append(tag)
            self._save()
            return
        inv = self._unpinned(self._inventory(wave.namespaces), hop, wave.name, resume)
        if not inv.targets:
            log.warning("wave-empty", hop=index + 1, wave=wave.name, reason="no meshed workload to restart")
        for item in inv.reported:
            log.info("not-restarted", wave=wave.name, what=str(item))
            if str(item) not in self.checkpoint.reported:
                self.checkpoint.reported.append(str(item))
        before = self._metrics(wave.name, wave.namespaces)
        started = self.clock()
        dp = self.spec.data_plane
        pending = self._wave_pending(index, hop, number)
        rounds = restart_rounds(pending, dp.max_concurrent_per_namespace, dp.max_namespaces)
        stamp = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        proxies: dict[str, int] = {}
        for key in (w.key for w in inv.targets):
            for version, pods in inv.proxies.get(key, {}).items():
                proxies[version] = proxies.get(version, 0) + pods
        log.info(
            "wave",
            hop=index + 1,
            wave=wave.name,
            namespaces=wave.namespaces,
            workloads=len(inv.targets),
            proxies=proxies,  # proxy version -> pods, before the wave
        )
        self._roll(
            f"wave {wave.name}",
            [(w, {RESTARTED_AT: stamp, RESTARTED_BY: marker}) for w in inv.targets],
            version=hop.to,
            record_hop=index,
            resume=resume,
        )
        if rounds:
            self._record("restart", (self.clock() - started).total_seconds() / rounds)
        bake = parse_duration(wave.bake_time)
        if bake:
            log.info("bake", wave=wave.name, seconds=bake)
            self._sleep(bake)
        self._still_healthy(wave.name, inv.targets, marker, hop.to, resume)
        self._metric_gate(wave.name, wave.namespaces, before, resume)
        self.checkpoint.waves_done.append(tag)
        self._save()

    def _sleep(self, seconds: float) -> None:
        """Wait (a bake), keeping the lock fresh: each slice ends when a renewal falls due."""
        left = float(seconds)
        while True:
            self.lock.fence()  # renews when due; a renewal that found the lock lost stops the bake at once
            if left <= 0:
                break
            step = min(left, self.lock.due_in() or left)
            self.sleep(step)
            left -= step

    def _pinned(self, inv: Inventory, hop: Hop) -> list[Pin]:
        """The workloads of ``inv`` whose proxy a restart would not bring to ``hop.to`` (observed now)."""
        view = self.ports.data_plane()
        return workload_pins(
            inv.targets, view.namespaces, view.pods, targets=[hop.to], values_version=values_proxy(self.plan.pins)
        )

    def _unpinned(self, inv: Inventory, hop: Hop, wave: str, resume: str) -> Inventory:
        """``inv`` without its pinned workloads: the spec's ``pins`` policy stops the run, or reports them."""
        pinned = self._pinned(inv, hop)
        if not pinned:
            return inv
        if self.spec.pins == "refuse":
            raise self._stop(
                f"wave {wave}: versions are pinned: {describe_pins(pinned)}", f"{remedies(pinned)}; then {resume}"
            )
        for pin in pinned:
            log.info("workload-pinned", wave=wave, workload=f"{pin.kind} {pin.namespace}/{pin.name}", pin=str(pin))
            text = f"{pin} (hop {hop.to}: not restarted, not upgraded)"
            if text not in self.checkpoint.pinned:
                self.checkpoint.pinned.append(text)
        keys = {(p.kind, p.namespace, p.name) for p in pinned}
        return replace(inv, targets=tuple(w for w in inv.targets if w.key not in keys))

    def _inventory(self, namespaces: list[str]) -> Inventory:
        dp = self.spec.data_plane
        return inventory(
            self.ports.data_plane(),
            namespaces,
            exclude_namespaces=dp.exclude_namespaces,
            include_selector=dp.include_selector or None,
            exclude_selector=dp.exclude_selector or None,
        )

    def _roll(
        self,
        label: str,
        items: list[tuple[Workload, dict[str, str | None]]],
        *,
        version: str | None,
        record_hop: int | None,
        resume: str,
    ) -> None:
        """Patch each workload's pod template with its annotations, throttled, and gate every one.

        A workload whose template already carries its ``restarted-by`` value was patched by an
        earlier (interrupted) attempt: it is gated, never patched twice.
        """
        dp = self.spec.data_plane
        r = _Rollout(
            label=label,
            want={w.key: a for w, a in items},
            pending=[w for w, a in items if w.pod_annotations.get(RESTARTED_BY) != a.get(RESTARTED_BY)],
            throttle=Throttle(dp.max_concurrent_per_namespace, dp.max_namespaces, dp.max_restarts_per_minute),
            version=version,
            record_hop=record_hop,
            resume=resume,
        )
        r.running = {w.key: self.clock() for w, _ in items if w not in r.pending}
        view = self.ports.data_plane()
        self._progress(label, 0, len(items))
        while r.pending or r.running:
            self._start_allowed(r, view)
            if not r.running and (not r.pending or r.held is not None):
                break
            seen = self.ports.wait_for_change(view.version, self._wait_seconds(r))
            view = self.ports.data_plane() if seen != view.version else view
            self._gate(r, view, len(items))
        if r.gave_up:
            dp = self.spec.data_plane
            raise self._stop(
                f"{r.label}: {len(r.gave_up)} workload(s) blocked by PodDisruptionBudgets for longer than "
                f"dataPlane.pdbWaitTimeout ({dp.pdb_wait_timeout}); every other workload went on: "
                f"{'; '.join(reason for reason, _ in r.gave_up.values())}",
                f"{'; '.join(hint for _, hint in r.gave_up.values())}; then {r.resume}",
            )
        if r.held is not None:  # the window has no room for another restart: the in-flight ones finished
            raise WindowClosed(r.held, what=f"the next restart of {r.label}", seconds=self._estimate("restart"))

    def _start_allowed(self, r: _Rollout, view: DataPlaneView) -> None:
        """Start what the throttle allows and the budgets can absorb.

        A workload a budget blocks waits without holding a throttle slot, so the others of its
        namespace and wave go on; it is retried on every change until ``dataPlane.pdbWaitTimeout``,
        then given up, and the round stops once the rest is done, naming every one given up.
        """
        now, dp = self.clock(), self.spec.data_plane
        workloads = {w.key: w for w in view.workloads}
        in_flight = [workloads[k] for k in r.running if k in workloads]
        budgets: dict[str, list[Budget]] = {}  # by namespace: each pending workload checks its own only
        for b in view.budgets:
            budgets.setdefault(b.namespace, []).append(b)
        free = []
        for w in list(r.pending):
            current = workloads.get(w.key, w)
            block = budget_block(current, budgets.get(w.namespace, ()))
            if not block:
                r.blocked.pop(w.key, None)
                free.append(w)
                continue
            if w.key not in r.blocked:
                log.warning("pdb-wait", workload=f"{w.kind} {w.namespace}/{w.name}", reason=block)
            waited = (now - r.blocked.setdefault(w.key, now)).total_seconds()
            if waited >= parse_duration(dp.pdb_wait_timeout):
                name = f"{w.kind} {w.namespace}/{w.name}"
                log.warning("pdb-timeout", workload=name, waited=int(waited), reason=block)
                r.pending.remove(w)
                del r.blocked[w.key]
                r.gave_up[w.key] = (f"{block} (waited {int(waited)}s)", budget_hint(current))
        if free and r.held is None and not (fit := self._restart_fits(r)).ok:
            log.info("window-hold", what=r.label, pending=len(r.pending), running=len(r.running), reason=fit.reason)
            r.held = fit  # no new restart starts; the ones in flight finish
        if r.held is not None:
            return
        starts = next_starts(free, in_flight, r.throttle, now=now.timestamp(), last_start=r.last_start)
        if not starts:
            return
        # One fenced checkpoint for the whole batch, written before any of its patches: a run stopped half-way
        # has recorded a few workloads it did not patch yet, as when it stops between a save and its patch; those
        # still carry their old restarted-by, so a resume restarts them and a rollback's revert changes nothing.
        # Each patch is preceded by a local check (no API call): once the heartbeat has found the lock lost, or
        # has not renewed it for longer than the lease (the earliest another run can take it over), the next
        # patch is not made. What is left: a Lease another run wrote since our last renewal or check (a
        # takeover judged by a clock ahead of ours, a deleted Lease) is seen only at the next renewal (every
        # third of the lease), so patches of the batch made before it still go out.
        if r.record_hop is not None:
            self.checkpoint.restarted += [
                Restarted(
                    kind=w.kind,
                    namespace=w.namespace,
                    name=w.name,
                    hop=r.record_hop,
                    previous_restarted_at=w.pod_annotations.get(RESTARTED_AT),
                    previous_restarted_by=w.pod_annotations.get(RESTARTED_BY),
                )
                for w in starts
            ]
            self._save()  # fenced
        else:
            self.lock.fence()
        for w in starts:
            if not self.lock.still_held():
                self.lock.fence()  # raises the loss the heartbeat found; renews (or raises) once the lease ran out
            self.ports.restart(w, r.want[w.key])
            log.info("restart", what=r.label, workload=f"{w.kind} {w.namespace}/{w.name}", running=len(r.running) + 1)
            r.pending.remove(w)
            r.running[w.key] = now
            r.last_start = now.timestamp()

    def _gate(self, r: _Rollout, view: DataPlaneView, total: int) -> None:
        """Assess every running workload; passed ones leave, failures stop the run (nothing more starts)."""
        current = {w.key: w for w in view.workloads}
        pods = pods_by_namespace(view.pods)  # once per view, not once per running workload
        failures = []
        for key, started in list(r.running.items()):
            name = f"{key[0]} {key[1]}/{key[2]}"
            if key not in current:
                log.warning("workload-gone", workload=name)
                del r.running[key]
                continue
            elapsed = (self.clock() - started).total_seconds()
            verdict = assess(
                current[key],
                pods.get(key[1], ()),
                marker=r.want[key].get(RESTARTED_BY),
                version=r.version,
                elapsed=elapsed,
                timeout=self.rollout_timeout,
            )
            if current[key].pod_annotations.get(RESTARTED_BY) != r.want[key].get(RESTARTED_BY):
                # The cache has not seen our patch yet: what it shows is the workload before it.
                verdict = Verdict("failed" if elapsed >= self.rollout_timeout else "rolling", "patch not observed")
            if verdict.state == "passed":
                del r.running[key]
                r.done += 1
                log.info("workload-passed", what=r.label, workload=name, done=r.done, total=total)
                self._progress(r.label, r.done, total)
            elif verdict.state == "failed":
                failures.append(f"{name}: {verdict.reason}")
        if failures:
            raise self._stop(
                f"{r.label}: health gate failed: {'; '.join(failures)}",
                f"no further workload was restarted; fix them, then {r.resume} "
                f"(or upgrader rollback {self.checkpoint.run_id})",
            )

    def _wait_seconds(self, r: _Rollout) -> float:
        """How long to wait for the next cluster change before deciding again (timeouts, PDB waits, the rate)."""
        now = self.clock()
        pdb = parse_duration(self.spec.data_plane.pdb_wait_timeout)
        moments = [30.0]
        moments += [self.rollout_timeout - (now - t).total_seconds() for t in r.running.values()]
        moments += [min(5.0, pdb - (now - t).total_seconds()) for t in r.blocked.values()]
        if r.pending:
            moments.append(r.throttle.next_start_at(r.last_start) - now.timestamp())
        return max(0.05, min(moments))

    def _progress(self, label: str, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(label, done, total)

    def _still_healthy(self, wave: str, targets: tuple[Workload, ...], marker: str, version: str, resume: str) -> None:
        """After the bake time, every restarted workload still passes its gate."""
        view = self.ports.data_plane()
        current = {w.key: w for w in view.workloads}
        sick = []
        for w in targets:
            now = current.get(w.key)
            if now is None:
                continue
            verdict = assess(now, view.pods, marker=marker, version=version, elapsed=0, timeout=1)
            if verdict.state != "passed":
                sick.append(f"{w.kind} {w.namespace}/{w.name}: {verdict.reason}")
        if sick:
            raise self._stop(f"wave {wave}: unhealthy after its bake time: {'; '.join(sick)}", resume)

    def _metrics(self, wave: str, namespaces: list[str]) -> dict[str, Sample]:
        """Each namespace's sample; a Prometheus that does not answer (after the retries) pauses the run."""
        if self.metrics is None:
            return {}
        window = parse_duration(self.spec.gates.metrics_window)
        try:
            return {ns: self.metrics.sample(ns, window) for ns in namespaces}
        except MetricsUnavailableError as exc:
            raise MetricsUnanswered(wave, exc) from exc

    def _metric_gate(self, wave: str, namespaces: list[str], before: Mapping[str, Sample], resume: str) -> None:
        if self.metrics is None:
            return
        problems = []
        for ns, after in self._metrics(wave, namespaces).items():
            log.info("metrics", wave=wave, summary=describe(before.get(ns), after))
            problems += assess_metrics(before.get(ns), after, self.spec.gates)
        if problems:
            raise self._stop(f"wave {wave}: metric gate failed: {'; '.join(problems)}", f"investigate, then {resume}")

    def _verify_data_plane(self, hop: Hop, resume: str) -> None:
        """Every restarted workload's pods run the hop's proxy (what was reported stays as it was)."""
        namespaces = [ns for w in hop.waves for ns in w.namespaces]
        inv = self._inventory(namespaces)
        pinned = {(p.kind, p.namespace, p.name) for p in self._pinned(inv, hop)}  # reported by their wave
        targets = {w.key for w in inv.targets} - pinned
        behind = sorted(
            f"{ns}/{name} ({', '.join(sorted(v for v in versions if v not in (hop.to, 'unknown')))})"
            for (kind, ns, name), versions in inv.proxies.items()
            if (kind, ns, name) in targets and set(versions) - {hop.to, "unknown"}
        )
        if behind:
            raise self._stop(f"workloads not on {hop.to}: {', '.join(behind[:10])}", f"restart them, then {resume}")


@dataclass
class _Rollout:
    """The bookkeeping of one throttled round of restarts (a wave, or the rollback's)."""

    label: str
    want: dict[Key, dict[str, str | None]]
    pending: list[Workload]
    throttle: Throttle
    version: str | None
    record_hop: int | None
    resume: str
    running: dict[Key, dt.datetime] = field(default_factory=dict)
    blocked: dict[Key, dt.datetime] = field(default_factory=dict)
    gave_up: dict[Key, tuple[str, str]] = field(default_factory=dict)  # blocked past pdbWaitTimeout: (why, hint)
    last_start: float | None = None
    done: int = 0
    held: windows.Fit | None = None  # the window had no room for another restart
