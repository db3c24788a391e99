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
from dataclasses import dataclass, field
from typing import Any, Protocol, assert_never

import structlog

from upgrader.catalog import Catalog
from upgrader.checkpoints import Checkpoint, CheckpointStore, Event, Mark, ReleaseRevisions, Restarted
from upgrader.dataplane import Inventory, Key, Throttle, Verdict, assess, budget_block, inventory, next_starts
from upgrader.discovery import proxy_version
from upgrader.errors import InputError, ReleaseLockedError, UpgraderError
from upgrader.locking import LockLostError
from upgrader.metrics import MetricsPort, Sample, describe
from upgrader.metrics import assess as assess_metrics
from upgrader.planning import (
    CONTROL_PLANE,
    CRDS,
    EXTENSIONS,
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
    hop_values,
)
from upgrader.ports import DataPlaneView, HelmRelease, Pod, ReleaseObject, Workload
from upgrader.preflight import CheckResult
from upgrader.spec import Spec, parse_duration
from upgrader.states import ACTING, TERMINAL, Machine, RunState, route_of
from upgrader.values import diff

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


class ExecutorPorts(Protocol):
    """What the executor needs from the outside world."""

    def release(self, name: str, namespace: str) -> HelmRelease | None: ...

    def user_values(self, name: str, namespace: str) -> dict[str, Any]: ...

    def all_values(self, name: str, namespace: str) -> dict[str, Any]: ...

    def chart_defaults(self, chart: str, version: str) -> dict[str, Any]: ...

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

    def tick(self) -> None: ...  # renew when due (cheap otherwise)

    def due_in(self) -> float: ...  # seconds until the next renewal is due


class _NoFence:
    def fence(self) -> None:
        return None

    def tick(self) -> None:
        return None

    def due_in(self) -> float:
        return math.inf


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

    def __post_init__(self) -> None:
        self.machine = Machine(state=self.checkpoint.state, stopped_in=self.checkpoint.stopped_in)

    # ---- bookkeeping -----------------------------------------------------------------------
    def _save(self) -> None:
        self.lock.fence()  # a run that lost the lock never writes its checkpoint over the new holder's work
        self.checkpoint.updated_at = self.clock()
        self.store.store(checkpoint=self.checkpoint)

    def _move(self, state: RunState, reason: str) -> None:
        if self.machine.state == state:
            return
        self.machine.move(state)
        self.checkpoint.state = state
        self.checkpoint.stopped_in = self.machine.stopped_in
        self.checkpoint.events.append(Event(at=self.clock(), state=state, reason=reason))
        if state in ACTING or state == S.DONE:
            self.checkpoint.mark(self.clock(), state)
        log.info("state", run_id=self.checkpoint.run_id, hop=self.checkpoint.hop, state=str(state), reason=reason)
        self._save()

    def _stop(self, reason: str, hint: str, kind: type[RunStoppedError] | None = None) -> RunStoppedError:
        """Record why the run stops and what to do next, move it to Failed; the error to raise."""
        self.checkpoint.errors.append(reason)
        self.checkpoint.next_command = hint
        if self.machine.state in (*TERMINAL, S.FAILED):
            self._save()
        else:
            self._move(S.FAILED, reason)
        return (kind or RunStoppedError)(reason, hint=hint)

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
            self._move(target, f"resumed in {target}")
        if self.machine.state in ACTING and first < len(self.plan.hops):
            first_step = _resume_step(self.plan.hops[first], self.machine.state, self.checkpoint.step)
        for index in range(first, len(self.plan.hops)):
            hop = self.plan.hops[index]
            self.checkpoint.hop = index
            self.machine.route = route_of(s.state for s in hop.steps)
            for number, step in enumerate(hop.steps):
                if index == first and number < first_step:
                    continue
                self.checkpoint.step = number
                self._move(step.state, f"hop {index + 1}: {hop.from_} -> {hop.to}: {step.name}")
                self._step(index, hop, step)
            self.checkpoint.step = 0
        self._move(S.DONE, "every hop done")
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
        resume = f"upgrader resume {self.checkpoint.run_id}"
        try:
            self._dispatch(index, hop, step, resume)  # every action inside fences itself
        except (RunStoppedError, LockLostError):
            raise  # a run that lost its lock writes nothing more: the other run owns the installation
        except UpgraderError as exc:
            raise self._stop(
                f"hop {index + 1}, step {step.name}: {exc.message}",
                exc.hint or f"fix the cause, then {resume} (or upgrader rollback {self.checkpoint.run_id})",
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
                return
            self._helm_step(
                step.release,
                step.chart or step.release,
                step.chart_version,
                values=hop if step.send_values else None,
                namespace=step.namespace,
            )
        elif isinstance(step, KeepRelease):
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
    def rollback(self, *, include_crds: bool = False, to_checkpoint: int | None = None) -> Checkpoint:
        """Return releases to their revisions before the run (or at checkpoint ``to_checkpoint``),
        then restart the workloads the run restarted after that point, so their proxies match again.

        Refused (bad input, nothing changed) for a run already rolled back and past the 2.12 chart
        split; any error while rolling back ends ``Failed`` with its reason, resumable by rollback.
        """
        if self.machine.state == S.ROLLED_BACK:
            raise InputError(
                f"run {self.checkpoint.run_id} is already rolled back", hint=f"upgrader status {self.checkpoint.run_id}"
            )
        mark = self.checkpoint.find_mark(to_checkpoint) if to_checkpoint is not None else None
        self._refuse_rollback_past_split(mark)
        if self.machine.state in ACTING:  # an interrupted run (killed mid-step) is paused first
            self._move(S.PAUSED, "interrupted run, rollback requested")
        where = f"checkpoint {mark.id} (hop {mark.hop + 1}, {mark.state})" if mark else "the start of the run"
        self._move(S.ROLLING_BACK, f"rollback to {where} requested")
        again = f"upgrader rollback {self.checkpoint.run_id}"
        try:
            self._roll_back(include_crds=include_crds, mark=mark, again=again)
        except (RunStoppedError, LockLostError):
            raise
        except UpgraderError as exc:
            raise self._stop(f"rollback to {where}: {exc.message}", exc.hint or f"fix the cause, then {again}") from exc
        self._move(S.ROLLED_BACK, f"releases back at {where}")
        return self.checkpoint

    def _refuse_rollback_past_split(self, mark: Mark | None) -> None:
        split = next((i for i, h in enumerate(self.plan.hops) if h.kind == "chart-split"), None)
        started = any(
            name in self.checkpoint.releases and self.checkpoint.releases[name].before is None
            for name in (CRDS, CONTROL_PLANE)
        )
        if split is not None and started and (mark is None or mark.hop <= split):
            raise InputError(
                f"run {self.checkpoint.run_id} went into the 2.12 chart split; rolling back past it would need "
                "the linkerd2 release it replaced",
                hint=f"roll back to a checkpoint after hop {split + 1} (upgrader status {self.checkpoint.run_id}), "
                "or finish the split with upgrader resume and restore 2.11 from a backup",
            )

    def _roll_back(self, *, include_crds: bool, mark: Mark | None, again: str) -> None:
        # Releases in the reverse order the run changed them: extensions, then the control plane
        # (linkerd-control-plane or, before 2.12, linkerd2), then the CRDs only when asked.
        touched = [n for n in self.checkpoint.releases if n != CRDS]
        order = [n for n in touched if n in EXTENSIONS] + [n for n in touched if n not in EXTENSIONS]
        if include_crds and CRDS in self.checkpoint.releases:
            self._check_crd_rollback(mark.charts.get(CRDS) if mark else None)
            order.append(CRDS)
        for name in order:
            record = self.checkpoint.releases[name]
            target = mark.revisions.get(name, record.before) if mark else record.before
            current = self.ports.release(name, record.namespace)
            if target is None or current is None or current.revision == target:
                continue
            log.info("helm-rollback", release=name, to_revision=target, from_revision=current.revision)
            self.lock.fence()
            after = self.ports.rollback(name, record.namespace, target)
            record.after.append(after.revision)
            record.charts_after.append(after.chart_version)
            self._save()
        seen: dict[tuple[str, str, str], Restarted] = {}
        for r in self.checkpoint.restarted[mark.restarted if mark else 0 :]:
            seen.setdefault((r.kind, r.namespace, r.name), r)
        # Each workload gets its pod template back as it was before (the restart annotations it had):
        # Deployments return to their old ReplicaSet, whose pods the (rolled back) injector meshes.
        live = {w.key: w for w in self.ports.data_plane().workloads}
        items = [
            (live[key], {RESTARTED_AT: r.previous_restarted_at, RESTARTED_BY: r.previous_restarted_by})
            for key, r in seen.items()
            if key in live
        ]
        self._roll("rollback", items, version=None, record_hop=None, resume=again)
        log.info("rolled-back", restarted_again=len(seen))

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

    def _charts_of(self, release: str) -> dict[str, str]:
        offering = {str(v): dict(r.charts) for v, r in self.catalog.releases_by_version().items()}
        return offering.get(release, {})

    # ---- helm steps ------------------------------------------------------------------------
    def _helm_step(
        self, name: str, chart: str, version: str, *, values: Hop | None, namespace: str | None = None
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
            return
        sent: dict[str, Any] = {}
        reset, reuse = False, False
        if values is not None:
            sent, reset, reuse = self._values_for(
                values, name, ns, chart, version, user=self.ports.user_values(name, ns)
            )
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

    def _values_for(
        self,
        hop: Hop,
        name: str,
        ns: str,
        chart: str,
        version: str,
        *,
        user: dict[str, Any],
        strategy: str | None = None,
    ) -> tuple[dict[str, Any], bool, bool]:
        """The hop's values for the control-plane chart; the redacted diff goes to the checkpoint."""
        spec = self.spec
        if strategy is not None and strategy != spec.values.strategy:
            spec = spec.model_copy(update={"values": spec.values.model_copy(update={"strategy": strategy})})
        out = hop_values(
            hop,
            spec,
            self.catalog,
            user_values=user,
            target_defaults=self.ports.chart_defaults(f"{self.repo}/{chart}", version),
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
            user = self.ports.user_values(legacy, legacy_ns) if old is not None else {}
            # helm install has no values to reuse: always the migrated user values plus the overrides
            values, _, _ = self._values_for(
                hop, legacy, legacy_ns, step.chart or step.release, version, user=user, strategy="reset-then-reuse"
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
        stale = sorted(p.name for p in self.ports.control_plane_pods(self.namespace) if proxy_version(p) != hop.to)
        if stale:
            problems.append(f"control-plane pods not on {hop.to}: {', '.join(stale[:6])}")
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
        if tag in self.checkpoint.waves_done or not wave.namespaces:
            return
        inv = self._inventory(wave.namespaces)
        for item in inv.reported:
            log.info("not-restarted", wave=wave.name, what=str(item))
            if str(item) not in self.checkpoint.reported:
                self.checkpoint.reported.append(str(item))
        before = self._metrics(wave.namespaces)
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
            if not r.running and not r.pending:
                break
            seen = self.ports.wait_for_change(view.version, self._wait_seconds(r))
            view = self.ports.data_plane() if seen != view.version else view
            self._gate(r, view, len(items))

    def _start_allowed(self, r: _Rollout, view: DataPlaneView) -> None:
        """Start what the throttle allows and the budgets can absorb (a blocked one waits, bounded)."""
        now, dp = self.clock(), self.spec.data_plane
        workloads = {w.key: w for w in view.workloads}
        in_flight = [workloads[k] for k in r.running if k in workloads]
        for w in next_starts(r.pending, in_flight, r.throttle, now=now.timestamp(), last_start=r.last_start):
            block = budget_block(workloads.get(w.key, w), view.budgets)
            if block:
                waited = (now - r.blocked.setdefault(w.key, now)).total_seconds()
                if waited >= parse_duration(dp.pdb_wait_timeout):
                    raise self._stop(
                        f"{r.label}: {block}; waited {int(waited)}s (dataPlane.pdbWaitTimeout {dp.pdb_wait_timeout})",
                        "relax the budget, set the workload's maxUnavailable to 0 (surge only), or annotate it "
                        f"upgrader.io/skip=true; then {r.resume}",
                    )
                if waited == 0:
                    log.warning("pdb-wait", workload=f"{w.kind} {w.namespace}/{w.name}", reason=block)
                continue
            r.blocked.pop(w.key, None)
            if r.record_hop is not None:
                self.checkpoint.restarted.append(
                    Restarted(
                        kind=w.kind,
                        namespace=w.namespace,
                        name=w.name,
                        hop=r.record_hop,
                        previous_restarted_at=w.pod_annotations.get(RESTARTED_AT),
                        previous_restarted_by=w.pod_annotations.get(RESTARTED_BY),
                    )
                )
                self._save()  # fenced
            else:
                self.lock.fence()
            self.ports.restart(w, r.want[w.key])
            log.info("restart", what=r.label, workload=f"{w.kind} {w.namespace}/{w.name}", running=len(r.running) + 1)
            r.pending.remove(w)
            r.running[w.key] = now
            r.last_start = now.timestamp()

    def _gate(self, r: _Rollout, view: DataPlaneView, total: int) -> None:
        """Assess every running workload; passed ones leave, failures stop the run (nothing more starts)."""
        current = {w.key: w for w in view.workloads}
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
                view.pods,
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

    def _metrics(self, namespaces: list[str]) -> dict[str, Sample]:
        if self.metrics is None:
            return {}
        window = parse_duration(self.spec.gates.metrics_window)
        return {ns: self.metrics.sample(ns, window) for ns in namespaces}

    def _metric_gate(self, wave: str, namespaces: list[str], before: Mapping[str, Sample], resume: str) -> None:
        if self.metrics is None:
            return
        problems = []
        for ns, after in self._metrics(namespaces).items():
            log.info("metrics", wave=wave, summary=describe(before.get(ns), after))
            problems += assess_metrics(before.get(ns), after, self.spec.gates)
        if problems:
            raise self._stop(f"wave {wave}: metric gate failed: {'; '.join(problems)}", f"investigate, then {resume}")

    def _verify_data_plane(self, hop: Hop, resume: str) -> None:
        """Every restarted workload's pods run the hop's proxy (what was reported stays as it was)."""
        namespaces = [ns for w in hop.waves for ns in w.namespaces]
        inv = self._inventory(namespaces)
        targets = {w.key for w in inv.targets}
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
    last_start: float | None = None
    done: int = 0
