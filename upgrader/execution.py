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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from upgrader.catalog import Catalog
from upgrader.checkpoints import Checkpoint, CheckpointStore, Event, ReleaseRevisions, Restarted
from upgrader.discovery import proxy_version
from upgrader.errors import UpgraderError
from upgrader.planning import CONTROL_PLANE, CRDS, EXTENSIONS, Hop, Plan
from upgrader.ports import HelmRelease, Pod, Workload
from upgrader.preflight import CheckResult
from upgrader.spec import Spec
from upgrader.states import ACTING, HOP_SEQUENCE, TERMINAL, Machine, RunState
from upgrader.values import diff, outgoing

log = structlog.get_logger("upgrader.execution")
S = RunState
RESTARTED_BY = "upgrader.io/restarted-by"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class RunStoppedError(UpgraderError):
    """The run stopped (failed step or preflight errors); the checkpoint holds where."""

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

    def workloads(self, namespaces: list[str]) -> list[Workload]: ...

    def meshed_pods(self) -> list[Pod]: ...

    def restart(self, workload: Workload, annotations: dict[str, str]) -> None: ...

    def wait_rolled_out(self, workload: Workload, timeout_seconds: int) -> bool: ...

    def preflight(self, plan: Plan, hop_index: int) -> list[CheckResult]: ...

    def rollback(self, name: str, namespace: str, revision: int) -> HelmRelease: ...


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

    def __post_init__(self) -> None:
        self.machine = Machine(state=self.checkpoint.state, stopped_in=self.checkpoint.stopped_in)

    # ---- bookkeeping -----------------------------------------------------------------------
    def _save(self) -> None:
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

    def _stop(self, reason: str, hint: str) -> RunStoppedError:
        self.checkpoint.errors.append(reason)
        self._move(S.FAILED, reason)
        return RunStoppedError(reason, hint=hint)

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> Checkpoint:
        """Run, or resume, every remaining hop; return the final checkpoint.

        A resumed run re-enters the step it was in (or stopped in) and goes on from there;
        every step first observes whether its work is already done.
        """
        if self.machine.state in TERMINAL:
            return self.checkpoint
        resume_from: RunState | None = None
        if self.machine.state in (S.PAUSED, S.FAILED):
            target = self.machine.stopped_in or S.PREFLIGHT
            self._move(target, f"resumed in {target}")
        if self.machine.state in ACTING:
            resume_from = self.machine.state
        first = self.checkpoint.hop
        for index in range(first, len(self.plan.hops)):
            self.checkpoint.hop = index
            self._hop(index, self.plan.hops[index], resume_from if index == first else None)
        self._move(S.DONE, "every hop done")
        return self.checkpoint

    def _hop(self, index: int, hop: Hop, resume_from: RunState | None) -> None:
        resume = f"upgrader resume {self.checkpoint.run_id}"
        start = HOP_SEQUENCE.index(resume_from) if resume_from else 0

        def due(state: RunState) -> bool:
            if HOP_SEQUENCE.index(state) < start:
                return False
            self._move(state, f"hop {index + 1}: {hop.from_} -> {hop.to}")
            return True

        if due(S.PREFLIGHT):
            sliced = self.plan.model_copy(update={"hops": self.plan.hops[index:]})
            blocking = [r for r in self.ports.preflight(sliced, index) if r.result == "error" and not r.waived]
            if blocking:
                ids = ", ".join(r.id for r in blocking)
                raise self._stop(
                    f"preflight failed before hop {index + 1}: {ids}",
                    f"fix them (upgrader preflight --to {hop.to}) or waive the ids in the spec; then {resume}",
                )
        if hop.kind != "data-plane":
            if due(S.UPGRADING_CRDS) and hop.kind == "upgrade" and CRDS in hop.charts:
                self._helm_step(CRDS, CRDS, hop.charts[CRDS], values=None)
            if due(S.UPGRADING_CONTROL_PLANE):
                self._helm_step(CONTROL_PLANE, CONTROL_PLANE, hop.charts[CONTROL_PLANE], values=hop)
            if due(S.VERIFYING_CONTROL_PLANE):
                self._verify_control_plane(hop, resume)
            if due(S.UPGRADING_EXTENSIONS):
                for step in hop.steps:
                    if step.state == S.UPGRADING_EXTENSIONS and step.chart in EXTENSIONS and step.chart_version:
                        self._helm_step(step.chart, step.chart, step.chart_version, values=None, namespace=step.chart)
        if due(S.RESTARTING_DATA_PLANE):
            self._restart_data_plane(index, hop, resume)
        if due(S.VERIFYING_DATA_PLANE):
            self._verify_data_plane(hop, resume)

    # ---- rollback --------------------------------------------------------------------------
    def rollback(self, *, include_crds: bool = False, to_checkpoint: int | None = None) -> Checkpoint:
        """Return releases to their revisions before the run (or at checkpoint ``to_checkpoint``),
        then restart the workloads the run restarted after that point, so their proxies match again.
        """
        mark = self.checkpoint.find_mark(to_checkpoint) if to_checkpoint is not None else None
        if self.machine.state in ACTING:  # an interrupted run (killed mid-step) is paused first
            self._move(S.PAUSED, "interrupted run, rollback requested")
        where = f"checkpoint {mark.id} (hop {mark.hop + 1}, {mark.state})" if mark else "the start of the run"
        self._move(S.ROLLING_BACK, f"rollback to {where} requested")
        order = [name for name in (*EXTENSIONS, CONTROL_PLANE) if name in self.checkpoint.releases]
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
            after = self.ports.rollback(name, record.namespace, target)
            record.after.append(after.revision)
            record.charts_after.append(after.chart_version)
            self._save()
        seen: dict[tuple[str, str, str], Restarted] = {}
        for r in self.checkpoint.restarted[mark.restarted if mark else 0 :]:
            seen.setdefault((r.kind, r.namespace, r.name), r)
        for kind, namespace, name in seen:
            workload = next((w for w in self.ports.workloads([namespace]) if (w.kind, w.name) == (kind, name)), None)
            if workload is None:
                continue
            self.ports.restart(
                workload,
                {
                    RESTARTED_AT: self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
                    RESTARTED_BY: f"{self.checkpoint.run_id}/rollback",
                },
            )
            if not self.ports.wait_rolled_out(workload, self.rollout_timeout):
                raise self._stop(
                    f"{kind} {namespace}/{name} did not roll out during rollback",
                    f"check it, then upgrader rollback {self.checkpoint.run_id}",
                )
        self._move(S.ROLLED_BACK, f"releases back at {where}; {len(seen)} restarted workload(s) restarted again")
        return self.checkpoint

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
            hop = values
            user = self.ports.user_values(name, ns)
            changes = [m.values for m in self.catalog.majors if m.major == int(hop.major.split(".")[1])]
            out = outgoing(
                self.spec.values.strategy,
                target_defaults=self.ports.chart_defaults(f"{self.repo}/{chart}", version),
                user_values=user,
                overrides=self.spec.values.overrides,
                changes=changes if hop.kind == "upgrade" else [],
            )
            sent, reset, reuse = out.values, out.reset_values, out.reuse_values
            old_effective = self.ports.all_values(name, ns)
            self.checkpoint.values_diff = diff(old_effective, out.effective)
            log.info(
                "values",
                release=name,
                strategy=self.spec.values.strategy,
                changed=len(self.checkpoint.values_diff),
                moved=out.migration.moved,
                dropped=out.migration.dropped,
            )
            self._save()
        log.info("helm-upgrade", release=name, namespace=ns, chart_version=version, revision=current.revision)
        try:
            after = self.ports.upgrade(
                name, f"{self.repo}/{chart}", ns, sent, version=version, reset_values=reset, reuse_values=reuse
            )
        except UpgraderError as exc:
            if exc.retryable:
                raise
            if "another operation" in exc.message.lower():
                raise self._stop(
                    f"release {ns}/{name} is locked by another helm operation (pending-*)",
                    f"if no helm command is running, roll it back to its last deployed revision (helm history "
                    f"{name} -n {ns}; helm rollback {name} <rev> -n {ns}); then upgrader resume "
                    f"{self.checkpoint.run_id}",
                ) from exc
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

    # ---- data plane (minimal: one workload at a time, wave by wave) ------------------------------
    def _restart_data_plane(self, index: int, hop: Hop, resume: str) -> None:
        marker = f"{self.checkpoint.run_id}/{index}"
        for wave in hop.waves:
            for workload in self.ports.workloads(wave.namespaces):
                if workload.pod_annotations.get(RESTARTED_BY) == marker:
                    continue  # restarted by this run in this hop already
                if not _meshed(workload):
                    continue
                self.checkpoint.restarted.append(
                    Restarted(
                        kind=workload.kind,
                        namespace=workload.namespace,
                        name=workload.name,
                        hop=index,
                        previous_restarted_at=workload.pod_annotations.get(RESTARTED_AT),
                    )
                )
                self._save()
                self.ports.restart(
                    workload, {RESTARTED_AT: self.clock().strftime("%Y-%m-%dT%H:%M:%SZ"), RESTARTED_BY: marker}
                )
                if not self.ports.wait_rolled_out(workload, self.rollout_timeout):
                    raise self._stop(
                        f"{workload.kind} {workload.namespace}/{workload.name} did not roll out",
                        f"kubectl -n {workload.namespace} rollout status {workload.kind.lower()}/"
                        f"{workload.name}; then {resume}",
                    )

    def _verify_data_plane(self, hop: Hop, resume: str) -> None:
        namespaces = {ns for w in hop.waves for ns in w.namespaces}
        behind = sorted(
            f"{p.namespace}/{p.name} ({proxy_version(p)})"
            for p in self.ports.meshed_pods()
            if p.namespace in namespaces and proxy_version(p) not in (hop.to, None, "unknown")
        )
        if behind:
            raise self._stop(f"pods not on {hop.to}: {', '.join(behind[:10])}", f"restart them, then {resume}")


def _meshed(workload: Workload) -> bool:
    """A workload whose pods the injector meshes (its namespace or template opts in), or already meshed."""
    return workload.pod_annotations.get("linkerd.io/inject") != "disabled"
