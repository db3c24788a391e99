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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from upgrader.catalog import Catalog
from upgrader.checkpoints import Checkpoint, CheckpointStore, Event, ReleaseRevisions, Restarted
from upgrader.dataplane import Inventory, Key, Throttle, Verdict, assess, budget_block, inventory, next_starts
from upgrader.discovery import proxy_version
from upgrader.errors import UpgraderError
from upgrader.metrics import MetricsPort, Sample, describe
from upgrader.metrics import assess as assess_metrics
from upgrader.planning import CONTROL_PLANE, CRDS, EXTENSIONS, Hop, Plan
from upgrader.ports import DataPlaneView, HelmRelease, Pod, Workload
from upgrader.preflight import CheckResult
from upgrader.spec import Spec, parse_duration
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

    def data_plane(self) -> DataPlaneView: ...  # namespaces, workloads, pods, budgets: one consistent copy

    def wait_for_change(self, since: int, timeout: float) -> int: ...  # watch-based; returns the new version

    def restart(self, workload: Workload, annotations: Mapping[str, str | None]) -> None: ...  # None removes

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
    metrics: MetricsPort | None = None
    sleep: Callable[[float], None] = time.sleep
    on_progress: Callable[[str, int, int], None] | None = None  # (what, done, total)

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
        # Each workload gets its pod template back as it was before (the restart annotations it had):
        # Deployments return to their old ReplicaSet, whose pods the (rolled back) injector meshes.
        live = {w.key: w for w in self.ports.data_plane().workloads}
        items = [
            (live[key], {RESTARTED_AT: r.previous_restarted_at, RESTARTED_BY: r.previous_restarted_by})
            for key, r in seen.items()
            if key in live
        ]
        self._roll(
            "rollback", items, version=None, record_hop=None, resume=f"upgrader rollback {self.checkpoint.run_id}"
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

    # ---- data plane: waves, throttled restarts, health gates -------------------------------------
    def _restart_data_plane(self, index: int, hop: Hop, resume: str) -> None:
        marker = f"{self.checkpoint.run_id}/{index}"
        for number, wave in enumerate(hop.waves):
            tag = f"{index}/{number}"
            if tag in self.checkpoint.waves_done or not wave.namespaces:
                continue
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
                self.sleep(bake)
            self._still_healthy(wave.name, inv.targets, marker, hop.to, resume)
            self._metric_gate(wave.name, wave.namespaces, before, resume)
            self.checkpoint.waves_done.append(tag)
            self._save()

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
                self._save()
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
