"""The application layer of staged rollouts (``upgrader rollout``): plan every cluster, run stage by stage.

Each cluster's run is a child process, ``python -m upgrader apply --context X --state-store
kubernetes:NS`` (or ``resume RUN`` for a run that stopped), started in its own session with
its output in a log file beside the rollout's record. A child process, not an in-process
call, because:

- a SIGKILL of the rollout does not kill a cluster's run half-way through a helm upgrade: the
  child finishes its run (or stops at its own safe point), keeping its checkpoint and lock in
  its cluster, and the next ``rollout resume`` follows it until it ends, then reads its state;
- a run keeps process-wide state (the retry policy's API wait, logging, signal handlers, its
  lock holder ``user@host:pid/run``): one process per run keeps runs of a stage run side by
  side (``maxConcurrent``) from sharing it, and a lock left by a killed child names a dead pid,
  which ``resume --take-over-lock`` takes over safely (never while that process is alive).

The rollout's own record (``upgrader.rollout.RolloutRecord``) is one JSON file per rollout,
written atomically (temporary file, fsync, rename). The record is never trusted alone: a
resumed rollout reads each unfinished cluster's checkpoint in that cluster and decides with
``upgrader.rollout.next_action``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from upgrader import runs
from upgrader.catalog import default_catalog
from upgrader.checkpoints import Checkpoint, CheckpointStore, write_private
from upgrader.errors import EXIT_FAILED, EXIT_PAUSED, EXIT_REFUSED, InputError, TransientError, UpgraderError
from upgrader.incluster import APP, LINKERD_REPO, SPEC_KEY, job_manifest
from upgrader.inputs import DOCUMENT_CAP, read_json_file, read_yaml_file
from upgrader.locking import pid_alive
from upgrader.metrics import MetricsPort, MetricsUnavailableError
from upgrader.planning import Plan
from upgrader.rollout import (
    Action,
    ClusterRecord,
    ClusterState,
    Member,
    Rollout,
    RolloutRecord,
    RolloutState,
    StagePlan,
    StageState,
    check_membership,
    context_names,
    job_exit,
    last_wave_namespaces,
    load_rollout,
    metric_gate_failures,
    new_record,
    next_action,
    outside_window,
    resolve,
    run_state_of,
    skip_reason,
    stage_outcome,
    window_refusal,
)
from upgrader.spec import Spec, load_spec

log = structlog.get_logger("upgrader")
Clock = Callable[[], dt.datetime]
POLL_SECONDS = 1.0
LAUNCH_SLACK = dt.timedelta(seconds=5)  # a run started this long before its launch is not the launch's


class RolloutRefusedError(UpgraderError):
    """The rollout does not start: a cluster's plan is refused, or the same rollout is already under way."""

    exit_code = EXIT_REFUSED


def default_rollout_state() -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "upgrader" / "rollouts"


def kubeconfig_path(kubeconfig: Path | None) -> Path:
    return kubeconfig if kubeconfig is not None else Path.home() / ".kube" / "config"


def load(spec_path: Path, kubeconfig: Path | None) -> tuple[Rollout, tuple[StagePlan, ...]]:
    """The rollout spec, its upgrade specs and its stages resolved against the kubeconfig's contexts."""
    rollout = load_spec_file(spec_path)
    return rollout, stages_of(rollout, kubeconfig)


def load_spec_file(spec_path: Path) -> Rollout:
    """The rollout spec and its upgrade specs (an unknown target version form is bad input here)."""
    rollout = load_rollout(spec_path, load_spec)
    default_catalog().parse(rollout.spec.target)
    return rollout


def stages_of(rollout: Rollout, kubeconfig: Path | None) -> tuple[StagePlan, ...]:
    path = kubeconfig_path(kubeconfig)
    data, _ = read_yaml_file(path, what="kubeconfig", cap=DOCUMENT_CAP, hint="pass --kubeconfig PATH")
    return resolve(rollout, context_names(data, str(path)))


def reopened(
    fleet: Fleet, rollout: Rollout, kubeconfig: Path | None, *, helm: str | None = None, repo: str | None = None
) -> tuple[RolloutRecord, tuple[StagePlan, ...]]:
    """A started rollout's record and stages, ``fleet`` set up as the rollout started (its kubeconfig, helm binary
    and repository name unless given, its clusters' state store, in-cluster or not)."""
    record = existing_record(fleet, rollout)
    fleet.state_namespace = record.state_store.removeprefix("kubernetes:")
    fleet.in_cluster = InCluster(**record.in_cluster) if record.in_cluster else None
    if kubeconfig is None and record.kubeconfig:
        fleet.kubeconfig = Path(record.kubeconfig)
    fleet.helm = helm or record.helm or fleet.helm
    fleet.repo = repo or record.repo or fleet.repo
    return record, stages_of(rollout, fleet.kubeconfig)


def target_of(rollout: Rollout) -> str:
    return str(default_catalog().parse(rollout.spec.target))


# ---- plans ---------------------------------------------------------------------------------


@dataclass
class ClusterPlan:
    member: Member
    plan: Plan | None  # None: skipped without planning (skip: true)
    skipped: str | None = None


@dataclass
class RolloutPlan:
    rollout: Rollout
    stages: tuple[StagePlan, ...]
    clusters: dict[str, ClusterPlan] = field(default_factory=dict)
    refused: str | None = None

    def skipped(self) -> dict[str, str]:
        return {c: p.skipped for c, p in self.clusters.items() if p.skipped}

    def as_json(self) -> dict[str, Any]:
        return {
            "rollout": self.rollout.spec.name,
            "to": target_of(self.rollout),
            "refused": self.refused,
            "stages": [
                {
                    "name": s.name,
                    "max_concurrent": s.max_concurrent,
                    "bake_seconds": s.bake_seconds,
                    "metrics_after_bake": s.metrics_after_bake,
                    "clusters": [self._cluster(m) for m in s.members],
                }
                for s in self.stages
            ],
        }

    def _cluster(self, m: Member) -> dict[str, Any]:
        cp = self.clusters[m.context]
        plan = cp.plan
        return {
            "context": m.context,
            "spec": str(m.spec_path) if m.spec_path else None,
            "skipped": cp.skipped,
            "from": plan.from_ if plan else None,
            "hops": [h.to for h in plan.hops] if plan else [],
            "refused": plan.refused.model_dump() if plan and plan.refused else None,
            "plan": plan.as_json() if plan else None,
        }


def plan_rollout(
    rollout: Rollout, stages: tuple[StagePlan, ...], *, kubeconfig: Path | None, helm: str, repo: str
) -> RolloutPlan:
    """Each cluster's own plan (the single-cluster planning path), in stage order; the first refused cluster
    that may not be skipped refuses the rollout."""
    result = RolloutPlan(rollout, stages)
    target = target_of(rollout)
    for stage in stages:
        for m in stage.members:
            if m.skip:
                result.clusters[m.context] = ClusterPlan(m, None, skip_reason(m, None)[0])
                continue
            try:
                session = runs.plan_session(
                    to=target,
                    from_=None,
                    offline=False,
                    spec_file=m.spec_path,
                    ack=None,
                    repo=repo,
                    kubeconfig=kubeconfig,
                    context=m.context,
                    helm=helm,
                )
            except UpgraderError as exc:
                raise type(exc)(f"cluster {m.context}: {exc.message}", hint=exc.hint) from exc
            plan = session.plan
            refused = (plan.refused.code, plan.refused.reason) if plan.refused else None
            skipped, refusal = skip_reason(m, refused)
            result.clusters[m.context] = ClusterPlan(m, plan, skipped)
            log.info("rollout-cluster-planned", context=m.context, hops=len(plan.hops), refused=refused)
            if refusal and result.refused is None:
                result.refused = refusal
    return result


def render_plan(result: RolloutPlan, fmt: str) -> str:
    """The rollout plan as ``json``, ``markdown`` or a ``table`` (with each cluster's own plan)."""
    from upgrader.rendering import render  # noqa: PLC0415

    if fmt == "json":
        return json.dumps(result.as_json(), indent=2) + "\n"
    md = fmt == "markdown"
    spec = result.rollout.spec
    lines = [
        f"{'# ' if md else ''}Rollout {spec.name} -> {target_of(result.rollout)}: {len(result.stages)} stage(s)",
        "",
    ]
    if result.refused:
        lines += [f"REFUSED: {result.refused}", ""]
    for number, stage in enumerate(result.stages, 1):
        head = (
            f"stage {number} {stage.name}: {len(stage.members)} cluster(s), {stage.max_concurrent} at once, "
            f"bake {stage.bake_seconds}s" + (", metric gates after the bake" if stage.metrics_after_bake else "")
        )
        lines.append(f"## {head}" if md else head)
        if md:
            lines += ["", "| cluster | from | hops | estimated | status |", "|---|---|---|---|---|"]
        for m in stage.members:
            cp = result.clusters[m.context]
            plan = cp.plan
            hops = " -> ".join([plan.from_ or "?", *(h.to for h in plan.hops)]) if plan and plan.hops else "-"
            status = (
                f"skipped: {cp.skipped}"
                if cp.skipped
                else f"refused ({plan.refused.code}): {plan.refused.reason}"
                if plan and plan.refused
                else "nothing to do"
                if plan and not plan.hops
                else "planned"
            )
            est = f"{plan.estimated_minutes} min" if plan else "-"
            if md:
                lines.append(f"| {m.context} | {plan.from_ if plan else '-'} | {hops} | {est} | {status} |")
            else:
                lines.append(f"  {m.context}: {hops}; {est}; {status}")
        lines.append("")
    for stage in result.stages:
        for m in stage.members:
            plan = result.clusters[m.context].plan
            if plan is None:
                continue
            own = render(plan, "markdown" if md else "table").rstrip("\n")
            lines += [f"### cluster {m.context}" if md else f"cluster {m.context}:", "", own, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# ---- the rollout's record --------------------------------------------------------------------


class RecordFiles:
    """``<folder>/<rollout>.json`` (mode 0600, atomic) and each cluster's run log in ``<folder>/<rollout>/``."""

    def __init__(self, folder: Path) -> None:
        if os.path.lexists(folder) and not folder.is_dir():
            raise InputError(f"--rollout-state {folder} is not a folder", hint="pass --rollout-state DIR of a folder")
        self.folder = folder

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def log_path(self, name: str, context: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", context)[:80]
        return self.folder / name / f"{safe}-{hashlib.sha256(context.encode()).hexdigest()[:8]}.log"

    def fetch(self, name: str) -> RolloutRecord | None:
        path = self.path(name)
        if not os.path.lexists(path):
            return None
        data = read_json_file(path, what="rollout record", hint="move the file away to start the rollout again")
        try:
            return RolloutRecord.model_validate(data)
        except ValueError as exc:
            raise InputError(
                f"rollout record {path} is not readable: {str(exc).splitlines()[0]}",
                hint="move the file away to start the rollout again",
            ) from None

    def store(self, record: RolloutRecord, now: dt.datetime) -> None:
        record.updated_at = now
        text = record.model_dump_json(indent=2)
        try:
            write_private(self.path(record.rollout), text)
        except OSError as exc:
            raise UpgraderError(
                f"cannot write the rollout record {self.path(record.rollout)}: {exc.strerror or exc}",
                hint=f"make {self.folder} writable, then upgrader rollout resume SPEC",
            ) from exc


# ---- running -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InCluster:
    """``rollout apply --in-cluster``: each cluster's run is a Job (``upgrader.incluster.job_manifest``) of
    ``image`` in ``namespace`` under ``service_account`` (its RBAC installed beforehand, e.g. by deploy/chart)."""

    image: str
    namespace: str = "upgrader"
    service_account: str = APP
    helm_repo_url: str = LINKERD_REPO

    def as_dict(self) -> dict[str, str]:
        return {
            "image": self.image,
            "namespace": self.namespace,
            "service_account": self.service_account,
            "helm_repo_url": self.helm_repo_url,
        }


@dataclass
class Fleet:
    """What a rollout acts through: the kubeconfig, helm, the state stores of each cluster and the clock."""

    kubeconfig: Path | None
    helm: str
    repo: str
    state_namespace: str
    files: RecordFiles
    clock: Clock = runs.utc_now
    sleep: Callable[[float], None] = time.sleep
    say: Callable[[str], None] = lambda _line: None
    python: str = sys.executable
    in_cluster: InCluster | None = None  # run each cluster's run as a Job in it, not as a local process
    metrics: Callable[[str], MetricsPort] | None = None  # a Prometheus URL's MetricsPort (None: the HTTP client)
    # whether a cluster (context, its upgrade spec) is installed at the target already (None: planned with helm)
    at_target: Callable[[str, Path | None, str], bool] | None = None
    _stores: dict[str, CheckpointStore] = field(default_factory=dict)
    _jobs: dict[str, Any] = field(default_factory=dict)

    def jobs(self, context: str) -> Any:
        """The Job adapter of a cluster (in_cluster rollouts)."""
        if context not in self._jobs:
            from upgrader.adapters.jobs import JobAdapter  # noqa: PLC0415

            self._jobs[context] = JobAdapter(runs.kube_adapter(self.kubeconfig, context).api_client)
        return self._jobs[context]

    @property
    def state_store(self) -> str:
        return f"kubernetes:{self.state_namespace}"

    def store(self, context: str) -> CheckpointStore:
        if context not in self._stores:
            self._stores[context] = runs.open_store(self.state_store, runs.kube_adapter(self.kubeconfig, context))
        return self._stores[context]

    def installed_at_target(self, context: str, spec_path: Path | None, target: str) -> bool:
        """The cluster needs no hop to ``target`` now (its own plan, the single-cluster planning path)."""
        if self.at_target is not None:
            return self.at_target(context, spec_path, target)
        session = runs.plan_session(
            to=target,
            from_=None,
            offline=False,
            spec_file=spec_path,
            ack=None,
            repo=self.repo,
            kubeconfig=self.kubeconfig,
            context=context,
            helm=self.helm,
        )
        return not session.plan.hops and session.plan.refused is None

    def common(self, context: str) -> list[str]:
        out = ["--context", context, "--state-store", self.state_store]
        if self.kubeconfig is not None:
            out += ["--kubeconfig", str(self.kubeconfig)]
        return out

    def checkpoint(self, record: RolloutRecord, cluster: ClusterRecord) -> Checkpoint | None:
        """The cluster's run: by its id once known, else the newest run started since the rollout launched it."""
        store = self.store(cluster.context)
        if cluster.run_id:
            return store.fetch(run_id=cluster.run_id)
        if cluster.launched_at is None:
            return None
        since = cluster.launched_at - LAUNCH_SLACK
        found = [c for c in store.runs() if c.started_at >= since and c.plan.get("to") == record.target]
        if found:
            cluster.run_id = found[-1].run_id
            return found[-1]
        return None


def run_id_for(record: RolloutRecord, context: str) -> str:
    """A cluster's run id in a rollout: the rollout's name and start, and the context (hashed: any name fits)."""
    digest = hashlib.sha256(f"{record.rollout}/{context}".encode()).hexdigest()[:8]
    return f"{record.rollout[:24].rstrip('-')}-{record.started_at:%m%d%H%M%S}-{digest}"


def hints(fleet: Fleet, record: RolloutRecord, cluster: ClusterRecord) -> list[str]:
    """The commands that go on with a stopped cluster: its own resume and rollback, then the rollout's resume."""
    common = shlex.join(fleet.common(cluster.context))
    spec = f" --spec {shlex.quote(cluster.spec)}" if cluster.spec else ""
    out = []
    if cluster.run_id:
        out += [
            f"upgrader resume {cluster.run_id} {common}{spec}",
            f"upgrader rollback {cluster.run_id} {common}",
        ]
    out.append(f"upgrader rollout resume {shlex.quote(record.spec_path)}")
    return out


def _last_launch(path: Path) -> list[str]:
    """The lines a child wrote to its log since its last launch (``# TIME COMMAND``); none without a log."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-400:]
    except OSError:
        return []
    starts = [i for i, line in enumerate(lines) if line.startswith("# ")]
    return lines[starts[-1] + 1 :] if starts else lines


def _error_line(path: Path) -> str:
    """The last ``error:``/``hint:`` lines a child printed (its log), for a run that never started."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    picked = [ln for ln in lines if ln.startswith(("error:", "hint:", "interrupted:", "internal error:"))]
    return " ".join(picked[-2:])[:600]


class Driver:
    """Runs a rollout's stages from its record: one child process per cluster run, ``maxConcurrent`` at once."""

    def __init__(self, fleet: Fleet, rollout: Rollout, stages: tuple[StagePlan, ...], record: RolloutRecord) -> None:
        self.fleet, self.rollout, self.stages, self.record = fleet, rollout, stages, record
        self.children: dict[str, Callable[[], int | None]] = {}  # context -> its run's exit code once it ended

    def save(self) -> None:
        self.fleet.files.store(self.record, self.fleet.clock())

    def run(self) -> RolloutRecord:
        record = self.record
        record.state = RolloutState.RUNNING
        record.reason = ""
        self.save()
        for stage, stage_record in zip(self.stages, record.stages, strict=True):
            if stage_record.state == StageState.PASSED:
                continue
            stage_record.state = StageState.RUNNING
            self.save()
            outcome = self._run_stage(stage)
            if outcome is StageState.PASSED:
                outcome = self._bake_and_gate(stage)
            stage_record.state = outcome
            if outcome is not StageState.PASSED:
                stopped = [c for c in record.stage_clusters(stage.name) if c.state in _STOPS] or []
                names = ", ".join(f"{c.context} ({c.state}: {c.reason})" for c in stopped) or stage_record.reason
                record.state = RolloutState.PAUSED if outcome is StageState.PAUSED else RolloutState.FAILED
                later = [s.name for s in self.stages[self.stages.index(stage) + 1 :]]
                record.reason = f"stage {stage.name} {outcome.lower()}: {names}" + (
                    f"; later stages not started: {', '.join(later)}" if later else ""
                )
                log.error("rollout-stopped", rollout=record.rollout, stage=stage.name, reason=record.reason)
                self.save()
                return record
            log.info("rollout-stage-passed", rollout=record.rollout, stage=stage.name)
            self.save()
        record.state = RolloutState.DONE
        self.save()
        return record

    # -- a stage -----------------------------------------------------------------------------

    def _run_stage(self, stage: StagePlan) -> StageState:
        record = self.record
        queue, following = self._decide(stage)
        while queue or self.children or following:
            self._reap(queue, following)
            if stage_outcome(record.stage_clusters(stage.name)) in (StageState.FAILED, StageState.PAUSED):
                for cluster, _ in queue:
                    log.info("rollout-not-started", context=cluster.context, reason="a cluster of its stage stopped")
                queue.clear()
            while queue and len(self.children) + len(following) < stage.max_concurrent:
                cluster, action = queue.pop(0)
                try:
                    closed = outside_window(self._spec_of(self._member(cluster.context)), self.fleet.clock())
                    if closed is None:
                        self._launch(cluster, action)
                        continue
                except UpgraderError as exc:
                    self._stopped_by(cluster, exc, "launching its run")
                    continue
                cluster.state, cluster.reason = ClusterState.PAUSED, closed
                cluster.next_commands = [f"upgrader rollout resume {shlex.quote(self.record.spec_path)}"]
                self.save()
                self.fleet.say(f"{cluster.context}: Paused ({closed})")
            if queue or self.children or following:
                self.fleet.sleep(POLL_SECONDS)
        return stage_outcome(record.stage_clusters(stage.name))

    def _decide(self, stage: StagePlan) -> tuple[list[tuple[ClusterRecord, Action]], list[ClusterRecord]]:
        """What to do with each cluster of the stage now: (to launch, in order; to follow)."""
        queue: list[tuple[ClusterRecord, Action]] = []
        following: list[ClusterRecord] = []
        for cluster in self.record.stage_clusters(stage.name):
            try:
                alive = self._alive(cluster)
                checkpoint = None if alive or cluster.state in _SETTLED else self.fleet.checkpoint(self.record, cluster)
                action = self._apply_decision(cluster, checkpoint, alive)
            except UpgraderError as exc:
                self._stopped_by(cluster, exc, "deciding what to do with it")
                continue
            if action is Action.FOLLOW:
                following.append(cluster)
                self.fleet.say(f"{cluster.context}: following its run (pid {cluster.pid})")
            elif action in (Action.START, Action.RESUME):
                queue.append((cluster, action))
        self.save()
        return queue, following

    def _apply_decision(self, cluster: ClusterRecord, checkpoint: Checkpoint | None, alive: bool) -> Action:
        decision = next_action(cluster, str(checkpoint.state) if checkpoint else None, alive)
        log.info("rollout-decision", context=cluster.context, action=str(decision.action), reason=decision.reason)
        if decision.action is Action.MARK_DONE:
            cluster.state, cluster.reason, cluster.next_commands = ClusterState.DONE, decision.reason, []
        elif decision.action is Action.STOP:
            cluster.state, cluster.reason = ClusterState.FAILED, decision.reason
            cluster.next_commands = hints(self.fleet, self.record, cluster)
        elif decision.action is Action.START:
            cluster.run_id = None
        return decision.action

    def _reap(self, queue: list[tuple[ClusterRecord, Action]], following: list[ClusterRecord]) -> None:
        """Settle each cluster whose process ended; a followed run that was killed mid-way is resumed."""
        for cluster in list(following):
            try:
                if self._alive(cluster):
                    continue
                following.remove(cluster)
                checkpoint = self.fleet.checkpoint(self.record, cluster)
                if checkpoint is not None and str(checkpoint.state) in ("Failed", "Paused"):
                    self._settle(cluster, None)
                    continue
                action = self._apply_decision(cluster, checkpoint, alive=False)
            except UpgraderError as exc:
                if cluster in following:
                    following.remove(cluster)
                self._stopped_by(cluster, exc, "following its run")
                continue
            if action in (Action.START, Action.RESUME):
                queue.insert(0, (cluster, action))
            self.save()
        for context, child in list(self.children.items()):
            try:
                code = child()
            except UpgraderError as exc:  # a Job's status or its run's checkpoint could not be read
                del self.children[context]
                self._stopped_by(self.record.clusters[context], exc, "following its Job")
                continue
            if code is not None:
                del self.children[context]
                self._settle(self.record.clusters[context], code)

    def _stopped_by(self, cluster: ClusterRecord, exc: UpgraderError, doing: str) -> None:
        """An error of ours while the rollout handled ``cluster`` stops that cluster (Paused when it may pass, e.g.
        the cluster unreachable; else Failed), with the reason and the commands that go on, not the whole driver."""
        state = ClusterState.PAUSED if isinstance(exc, TransientError) else ClusterState.FAILED
        reason = f"{doing}: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")
        cluster.state, cluster.reason, cluster.pid = state, reason, None
        cluster.next_commands = hints(self.fleet, self.record, cluster)
        self.save()
        self.fleet.say(f"{cluster.context}: {state} ({reason})")
        log.error("rollout-cluster-error", context=cluster.context, state=str(state), reason=reason)

    def _alive(self, cluster: ClusterRecord) -> bool:
        """The process an earlier rollout started for ``cluster`` still runs (on this host)."""
        if cluster.state != ClusterState.RUNNING:
            return False
        if cluster.job is not None:
            return self._job_exit(cluster) is None
        if cluster.pid is None:
            return False
        if cluster.context in self.children:
            return self.children[cluster.context]() is None
        return cluster.host == socket.gethostname() and pid_alive(cluster.pid)

    def _job_exit(self, cluster: ClusterRecord) -> int | None:
        """A cluster's Job as an exit code (None: still going), from its run's checkpoint and the Job's status."""
        checkpoint = self.fleet.checkpoint(self.record, cluster)
        ns = (self.record.in_cluster or {}).get("namespace", "")
        job = self.fleet.jobs(cluster.context).job(ns, cluster.job) if cluster.job else None
        return job_exit(job, str(checkpoint.state) if checkpoint else None)

    def _launch(self, cluster: ClusterRecord, action: Action) -> None:
        if self.fleet.in_cluster is not None:
            self._launch_job(cluster)
            return
        fleet, record = self.fleet, self.record
        args = [fleet.python, "-m", "upgrader", "--log-format", "json"]
        if action is Action.RESUME and cluster.run_id:
            # only a stale lock of its own run (its earlier launch): another run's lock is never ours to take
            args += ["resume", cluster.run_id, "--take-over-lock", "--own-lock-only"]
        else:  # the run is named up front: the rollout finds it in its cluster whatever happens to either process
            cluster.run_id = cluster.run_id or run_id_for(record, cluster.context)
            args += ["apply", "--to", record.target, "--yes", "--run-id", cluster.run_id]
        args += [*fleet.common(cluster.context), "--helm", fleet.helm]
        if action is not Action.RESUME or not cluster.run_id:
            args += ["--repo", fleet.repo]
        if cluster.spec:
            args += ["--spec", cluster.spec]
        path = fleet.files.log_path(record.rollout, cluster.context)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # the launch is recorded before the process starts (Running, no pid yet): a rollout killed in between is
        # resumed from the run's checkpoint, never by starting a second process blind (see next_action)
        cluster.state, cluster.pid, cluster.host = ClusterState.RUNNING, None, socket.gethostname()
        cluster.launched_at = (
            fleet.clock() if action is Action.START or cluster.launched_at is None else cluster.launched_at
        )
        cluster.launches += 1
        cluster.reason = f"{'resuming ' + (cluster.run_id or '') if action is Action.RESUME else 'applying'}"
        cluster.next_commands = []
        self.save()
        with path.open("ab") as out:
            out.write(f"\n# {fleet.clock().isoformat()} {shlex.join(args[1:])}\n".encode())
            out.flush()
            child = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.children[cluster.context] = child.poll
        cluster.pid = child.pid
        self.save()
        fleet.say(f"{cluster.context}: {cluster.reason} (pid {child.pid}, log {path})")
        log.info("rollout-launch", context=cluster.context, action=str(action), pid=child.pid, log=str(path))

    def _launch_job(self, cluster: ClusterRecord) -> None:
        """The cluster's run as a Job in it: its spec in a Secret beside it, the run named up front (a new Job of
        the same run continues it from its checkpoint), followed through the cluster's state store."""
        fleet, record = self.fleet, self.record
        place = fleet.in_cluster
        assert place is not None  # noqa: S101 - only called for in_cluster rollouts
        cluster.run_id = cluster.run_id or run_id_for(record, cluster.context)
        name = f"{cluster.run_id}-{cluster.launches + 1}"
        jobs = fleet.jobs(cluster.context)
        labels = {"app.kubernetes.io/name": APP, "upgrader.io/rollout": record.rollout}
        secret = None
        if cluster.spec:
            secret = f"{name}-spec"
            jobs.put_secret(place.namespace, secret, {SPEC_KEY: _portable_spec(Path(cluster.spec))}, labels)
        manifest = job_manifest(
            name=name,
            namespace=place.namespace,
            image=place.image,
            target=record.target,
            service_account=place.service_account,
            spec_secret=secret,
            state_namespace=fleet.state_namespace,
            run_id=cluster.run_id,
            labels={"upgrader.io/rollout": record.rollout},
            helm_repo_url=place.helm_repo_url,
        )
        # recorded before the Job is created: a rollout killed in between reads the Job (or its absence) back
        cluster.state, cluster.job, cluster.pid, cluster.host = ClusterState.RUNNING, name, None, None
        cluster.launched_at = cluster.launched_at or fleet.clock()
        cluster.launches += 1
        cluster.reason, cluster.next_commands = f"Job {place.namespace}/{name}", []
        self.save()
        jobs.create_job(manifest)
        self.children[cluster.context] = lambda: self._job_exit(cluster)
        fleet.say(f"{cluster.context}: {cluster.reason} created (run {cluster.run_id})")
        log.info("rollout-job", context=cluster.context, job=f"{place.namespace}/{name}", run_id=cluster.run_id)

    def _settle(self, cluster: ClusterRecord, code: int | None) -> None:
        """A cluster's process ended: its checkpoint (read in its cluster) says where its run is."""
        try:
            checkpoint = self.fleet.checkpoint(self.record, cluster)
        except UpgraderError as exc:
            cluster.state, cluster.reason = ClusterState.FAILED, f"its checkpoint could not be read: {exc.message}"
            cluster.next_commands = hints(self.fleet, self.record, cluster)
            self.save()
            return
        refused = window_refusal(_last_launch(self.fleet.files.log_path(self.record.rollout, cluster.context)))
        state, reason = run_state_of(code, str(checkpoint.state) if checkpoint else None, refused)
        if cluster.job is not None and checkpoint is None and state is ClusterState.DONE:
            state, reason = self._job_without_run(cluster)
        by_window = refused is not None and state is ClusterState.PAUSED  # its reason names the next opening
        if state is not ClusterState.DONE and not by_window:
            detail = checkpoint.events[-1].reason if checkpoint and checkpoint.events else ""
            detail = detail or _error_line(self.fleet.files.log_path(self.record.rollout, cluster.context))
            reason = f"{reason}: {detail}" if detail else reason
        cluster.state, cluster.reason, cluster.pid = state, reason, None
        cluster.next_commands = hints(self.fleet, self.record, cluster)
        if state is ClusterState.DONE:
            cluster.next_commands = []
        elif by_window and checkpoint is None:  # no run was stored: only the rollout goes on with it
            cluster.next_commands = cluster.next_commands[-1:]
        self.save()
        self.fleet.say(f"{cluster.context}: {state} ({reason})")
        log.info("rollout-cluster", context=cluster.context, state=str(state), reason=reason, run_id=cluster.run_id)

    def _job_without_run(self, cluster: ClusterRecord) -> tuple[ClusterState, str]:
        """A cluster's Job completed but no checkpoint of its run is in the cluster: Done only when the cluster
        is at the target already (the Job found nothing to do), else its pod ended without running anything."""
        ns = (self.record.in_cluster or {}).get("namespace", "")
        member = self._member(cluster.context)
        try:
            at_target = self.fleet.installed_at_target(cluster.context, member.spec_path, self.record.target)
        except UpgraderError as exc:
            return ClusterState.FAILED, (
                f"Job {ns}/{cluster.job} completed without a checkpoint of run {cluster.run_id}, and the "
                f"installed version could not be read: {exc.message}"
            )
        if at_target:
            return ClusterState.DONE, f"already at {self.record.target}: Job {ns}/{cluster.job} had nothing to run"
        return ClusterState.FAILED, (
            f"Job {ns}/{cluster.job} completed but run {cluster.run_id} left no checkpoint in the cluster and it "
            f"is not at {self.record.target}: its pod ended without running "
            f"(see kubectl logs -n {ns} job/{cluster.job})"
        )

    # -- after a stage -----------------------------------------------------------------------

    def _bake_and_gate(self, stage: StagePlan) -> StageState:
        record = self.record
        stage_record = next(s for s in record.stages if s.name == stage.name)
        if stage.bake_seconds:
            if stage_record.bake_until is None:
                stage_record.bake_until = self.fleet.clock() + dt.timedelta(seconds=stage.bake_seconds)
            stage_record.state = StageState.BAKING
            self.save()
            self.fleet.say(f"stage {stage.name}: baking until {stage_record.bake_until.isoformat()}")
            while (left := (stage_record.bake_until - self.fleet.clock()).total_seconds()) > 0:
                self.fleet.sleep(min(left, 30.0))
        if not stage.metrics_after_bake:
            return StageState.PASSED
        return self._metric_gates(stage, stage_record)

    def _metric_gates(self, stage: StagePlan, stage_record: Any) -> StageState:
        failures: list[str] = []
        for member in stage.members:
            cluster = self.record.clusters[member.context]
            if cluster.state is not ClusterState.DONE:
                continue
            try:
                checkpoint = self.fleet.checkpoint(self.record, cluster)
                spec = self._spec_of(member)
                if checkpoint is None or spec.gates.prometheus_url is None:
                    continue
                port = (self.fleet.metrics or _prometheus)(spec.gates.prometheus_url)
                problems = metric_gate_failures(port, last_wave_namespaces(checkpoint.plan), spec)
            except MetricsUnavailableError as exc:
                stage_record.reason = f"{member.context}: metric gates cannot judge the bake: {exc.message}"
                return StageState.PAUSED
            except UpgraderError as exc:  # its run or its spec could not be read: the gates cannot judge it
                stage_record.reason = f"{member.context}: metric gates cannot judge the bake: {exc.message}"
                return StageState.PAUSED
            failures += [f"{member.context}: {p}" for p in problems]
        if failures:
            stage_record.reason = "metric gates after the bake: " + "; ".join(failures)
            return StageState.FAILED
        return StageState.PASSED

    def _member(self, context: str) -> Member:
        return next(m for s in self.stages for m in s.members if m.context == context)

    def _spec_of(self, member: Member) -> Spec:
        if member.spec_path is None:
            return Spec()
        return self.rollout.upgrade_specs.get(str(member.spec_path)) or load_spec(member.spec_path)


def _prometheus(url: str) -> MetricsPort:
    from upgrader.adapters.cluster_ports import RetryingMetrics  # noqa: PLC0415
    from upgrader.adapters.prometheus import PrometheusMetrics  # noqa: PLC0415

    return RetryingMetrics(PrometheusMetrics(url))


def _portable_spec(path: Path) -> str:
    """A cluster's upgrade spec as the Job's pod reads it: ``values.file`` merged in (the pod has no such file)."""
    spec = load_spec(path)
    spec = spec.model_copy(update={"values": spec.values.model_copy(update={"file": None})})
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


_SETTLED = (ClusterState.DONE, ClusterState.SKIPPED)
_STOPS = (ClusterState.FAILED, ClusterState.PAUSED)


def exit_code(record: RolloutRecord) -> int:
    return {RolloutState.DONE: 0, RolloutState.PAUSED: EXIT_PAUSED}.get(record.state, EXIT_FAILED)


def start(fleet: Fleet, rollout: Rollout, stages: tuple[StagePlan, ...], planned: RolloutPlan) -> RolloutRecord:
    """A new rollout's record (refused while one of the same name is unfinished), then its run."""
    refuse_if_under_way(fleet, rollout)
    record = new_record(
        rollout,
        stages,
        kubeconfig=str(fleet.kubeconfig.absolute()) if fleet.kubeconfig else None,
        state_store=fleet.state_store,
        now=fleet.clock(),
        skipped=planned.skipped(),
        target=target_of(rollout),
    )
    record.in_cluster = fleet.in_cluster.as_dict() if fleet.in_cluster else None
    record.repo, record.helm = fleet.repo, fleet.helm
    return Driver(fleet, rollout, stages, record).run()


def refuse_if_under_way(fleet: Fleet, rollout: Rollout) -> None:
    """A rollout of the same name that has not finished is continued with ``rollout resume``, never started again."""
    existing = fleet.files.fetch(rollout.spec.name)
    if existing is not None and existing.state != RolloutState.DONE:
        raise RolloutRefusedError(
            f"rollout {rollout.spec.name} is already under way ({existing.state}: {existing.reason or 'running'})",
            hint=f"continue it: upgrader rollout resume {shlex.quote(str(rollout.path))}",
        )


def resume(fleet: Fleet, rollout: Rollout, stages: tuple[StagePlan, ...]) -> RolloutRecord:
    """Go on with a rollout from its record: Done clusters are left alone, the others decided again."""
    record = existing_record(fleet, rollout)
    if record.state == RolloutState.DONE:
        return record
    check_membership(record, stages)
    return Driver(fleet, rollout, stages, record).run()


def existing_record(fleet: Fleet, rollout: Rollout) -> RolloutRecord:
    record = fleet.files.fetch(rollout.spec.name)
    if record is None:
        raise InputError(
            f"no rollout {rollout.spec.name} in {fleet.files.folder}",
            hint=f"start it: upgrader rollout apply {shlex.quote(str(rollout.path))} (or pass --rollout-state DIR)",
        )
    if record.spec_digest != rollout.digest:
        raise InputError(
            f"rollout spec {rollout.path} changed since rollout {record.rollout} started",
            hint="restore the spec it started with (a changed spec is a new rollout: move the record away first)",
        )
    return record


def cluster_status(fleet: Fleet, record: RolloutRecord, cluster: ClusterRecord) -> dict[str, Any]:
    """A cluster as ``rollout status`` shows it: the rollout's record and its run's checkpoint, read now."""
    row: dict[str, Any] = {
        "context": cluster.context,
        "stage": cluster.stage,
        "state": str(cluster.state),
        "reason": cluster.reason,
        "run_id": cluster.run_id,
        "run": None,
        "next_commands": cluster.next_commands,
    }
    if cluster.state is ClusterState.SKIPPED or (cluster.run_id is None and cluster.launched_at is None):
        return row
    try:
        checkpoint = fleet.checkpoint(record, cluster)
    except UpgraderError as exc:
        row["run"] = {"error": exc.message}
        return row
    if checkpoint is not None:
        hops = checkpoint.plan.get("hops") or []
        row["run_id"] = checkpoint.run_id
        row["run"] = {
            "state": str(checkpoint.state),
            "hop": f"{min(checkpoint.hop + 1, len(hops))} of {len(hops)}",
            "from": checkpoint.plan.get("from"),
            "to": checkpoint.plan.get("to"),
            "updated_at": checkpoint.updated_at.isoformat(),
        }
    return row
