"""Staged rollouts across clusters (``kind: RolloutSpec``): the spec, the rollout's record and its decisions.

A rollout brings every cluster of a fleet to one target version, stage by stage: a stage is a
list of clusters (kubeconfig contexts, named or selected by a glob or a regular expression
over the kubeconfig's context names), run at most ``maxConcurrent`` at a time, each with its
own upgrade spec; a stage passes when every cluster of it is ``Done`` and, after its bake
time, (optionally) the metric gates of each cluster's last wave still pass. A stage starts
only once the one before passed.

This module decides and never acts: ``load_rollout`` reads and validates a spec (exit 2 on
anything wrong), ``resolve`` turns its cluster entries into the stages' members against a
kubeconfig's contexts, ``RolloutRecord`` is the rollout's own record (each cluster's state,
run id and the process that runs it), and ``next_action`` says what to do with a cluster
from its record, its run's checkpoint state and whether the process running it is alive.
``upgrader.fleet`` acts on these decisions.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from upgrader.errors import InputError
from upgrader.inputs import SPEC_CAP, read_yaml_file, validation_error
from upgrader.metrics import MetricsPort, assess
from upgrader.spec import Spec, parse_duration
from upgrader.windows import REFUSED_EVENT, fits

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
ROLLOUT_HINT = "see plans/rollouts/ for an example RolloutSpec"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class ClusterEntry(_Model):
    """One cluster (``context``) or every context a selector picks (``match``: a glob, ``regex``: a full match)."""

    context: str | None = None
    match: str | None = None
    regex: str | None = None
    spec: str | None = None  # this cluster's upgrade spec (relative to the rollout spec's folder)
    skip: bool = False  # listed, but left out of the rollout (shown as skipped)
    allow_refused: bool = False  # a refused plan skips this cluster (with its reason) instead of refusing the rollout

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_way(self) -> ClusterEntry:
        given = [k for k in ("context", "match", "regex") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of context (a name), match (a glob) or regex")
        return self

    def describe(self) -> str:
        if self.context:
            return f"context {self.context!r}"
        return f"match {self.match!r}" if self.match else f"regex {self.regex!r}"

    def picks(self, context: str) -> bool:
        if self.context is not None:
            return context == self.context
        if self.match is not None:
            return fnmatch.fnmatchcase(context, self.match)
        return re.fullmatch(self.regex or "", context) is not None


class StageGates(_Model):
    # after the bake, each cluster's last wave's metric gates (its spec's gates.prometheusUrl) must still pass
    metrics_after_bake: bool = False


class Stage(_Model):
    name: str
    clusters: list[ClusterEntry] = Field(min_length=1)
    spec: str | None = None  # the stage's upgrade spec (a cluster's own wins)
    max_concurrent: int = Field(default=1, ge=1, le=50)
    bake_time: str = "0s"
    gates: StageGates = Field(default_factory=StageGates)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be lowercase letters, digits and '-' (at most 63), like canary")
        return value

    @field_validator("bake_time")
    @classmethod
    def _bake(cls, value: str) -> str:
        parse_duration(value)
        return value


class RolloutSpec(_Model):
    api_version: Literal["upgrader.io/v1alpha1"] = "upgrader.io/v1alpha1"
    kind: Literal["RolloutSpec"]
    name: str
    description: str = ""
    target: str
    spec: str | None = None  # the upgrade spec of every cluster without its own or its stage's
    stages: list[Stage] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be lowercase letters, digits and '-' (at most 63), like fleet-2-14")
        return value

    @model_validator(mode="after")
    def _unique_stages(self) -> RolloutSpec:
        names = [s.name for s in self.stages]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"stage names must be unique: {', '.join(twice)} given twice")
        return self


@dataclass(frozen=True)
class Member:
    """A cluster of a stage: its context, its upgrade spec (None: the defaults) and its skip rules."""

    context: str
    stage: str
    spec_path: Path | None
    skip: bool = False
    allow_refused: bool = False


@dataclass(frozen=True)
class StagePlan:
    name: str
    members: tuple[Member, ...]
    max_concurrent: int
    bake_seconds: int
    metrics_after_bake: bool


@dataclass(frozen=True)
class Rollout:
    """A loaded rollout spec: the spec, its file's folder (spec paths are relative to it) and its digest."""

    spec: RolloutSpec
    path: Path
    digest: str
    upgrade_specs: dict[str, Spec]  # each upgrade spec's path (the rollout spec's folder / as written) -> the spec

    @property
    def folder(self) -> Path:
        return self.path.parent


def load_rollout(path: Path, load_upgrade_spec: Any) -> Rollout:
    """Read and validate a rollout spec and every upgrade spec it names; every problem is bad input (exit 2).

    ``load_upgrade_spec`` is ``upgrader.spec.load_spec`` (passed in so tests can count what is read).
    """
    from upgrader.inputs import json_digest  # noqa: PLC0415 - a records-layer helper

    data, marks = read_yaml_file(path, what="rollout spec", cap=SPEC_CAP, hint=ROLLOUT_HINT)
    if not isinstance(data, dict):
        raise InputError(f"rollout spec {path} must be a map of fields", hint=ROLLOUT_HINT)
    if data.get("kind") != "RolloutSpec":
        raise InputError(
            f"rollout spec {path} is not a RolloutSpec (kind: {data.get('kind')!r})",
            hint="a rollout spec says kind: RolloutSpec; an UpgradeSpec is for `upgrader apply --spec`",
        )
    try:
        spec = RolloutSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source=f"rollout spec {path}", marks=marks, hint=ROLLOUT_HINT) from None
    loaded: dict[str, Spec] = {}
    for given in _spec_paths(spec):
        upgrade = load_upgrade_spec(path.parent / given)
        if upgrade.target is not None and upgrade.target != spec.target:
            raise InputError(
                f"rollout spec {path}: upgrade spec {given} targets {upgrade.target}, the rollout {spec.target}",
                hint="remove target: from the upgrade spec (the rollout's target is used) or make them equal",
            )
        if upgrade.dry_run:
            raise InputError(
                f"rollout spec {path}: upgrade spec {given} has dryRun: true, and a rollout changes clusters",
                hint="review with `upgrader rollout plan` instead; give the rollout specs without dryRun",
            )
        loaded[given] = upgrade
    for stage in spec.stages:
        if stage.gates.metrics_after_bake:
            for entry in stage.clusters:
                chosen = entry.spec or stage.spec or spec.spec
                if chosen is None or loaded[chosen].gates.prometheus_url is None:
                    raise InputError(
                        f"rollout spec {path}: stage {stage.name} has gates.metricsAfterBake, but {entry.describe()}'s "
                        "upgrade spec has no gates.prometheusUrl to judge its last wave with",
                        hint="set gates.prometheusUrl in that cluster's upgrade spec, or drop metricsAfterBake",
                    )
    return Rollout(spec, path, json_digest(data), {str(path.parent / k): v for k, v in loaded.items()})


def _spec_paths(spec: RolloutSpec) -> list[str]:
    paths = [spec.spec] + [s.spec for s in spec.stages] + [c.spec for s in spec.stages for c in s.clusters]
    return list(dict.fromkeys(p for p in paths if p))


def context_names(kubeconfig: Any, source: str) -> list[str]:
    """The context names of a kubeconfig's data, in file order (bad input when it has none)."""
    contexts = kubeconfig.get("contexts") if isinstance(kubeconfig, dict) else None
    names = [c.get("name") for c in contexts or [] if isinstance(c, dict)]
    found = [n for n in names if isinstance(n, str) and n]
    if not found:
        raise InputError(
            f"kubeconfig {source} has no contexts", hint="pass --kubeconfig PATH with one context a cluster"
        )
    return found


def resolve(rollout: Rollout, contexts: Sequence[str]) -> tuple[StagePlan, ...]:
    """Each stage's members, in order: a named context must exist, a selector must pick one, and no cluster
    may be in two places (each is upgraded once, in one stage)."""
    spec = rollout.spec
    placed: dict[str, str] = {}
    stages = []
    for stage in spec.stages:
        members: list[Member] = []
        for entry in stage.clusters:
            picked = [c for c in contexts if entry.picks(c)]
            if not picked:
                known = ", ".join(contexts[:20]) + (" ..." if len(contexts) > 20 else "")
                raise InputError(
                    f"rollout {spec.name}: stage {stage.name}: {entry.describe()} names no context of the kubeconfig",
                    hint=f"its contexts: {known}",
                )
            chosen = entry.spec or stage.spec or spec.spec
            for context in picked:
                if context in placed:
                    raise InputError(
                        f"rollout {spec.name}: cluster {context} is in stage {placed[context]} and again in stage "
                        f"{stage.name} ({entry.describe()})",
                        hint="list each cluster once: narrow the selector or remove the duplicate",
                    )
                placed[context] = stage.name
                members.append(
                    Member(
                        context,
                        stage.name,
                        rollout.folder / chosen if chosen else None,
                        skip=entry.skip,
                        allow_refused=entry.allow_refused,
                    )
                )
        stages.append(
            StagePlan(
                stage.name,
                tuple(members),
                stage.max_concurrent,
                parse_duration(stage.bake_time),
                stage.gates.metrics_after_bake,
            )
        )
    return tuple(stages)


# ---- the rollout's record --------------------------------------------------------------------


class ClusterState(StrEnum):
    """A cluster in a rollout. Terminal for the rollout: Done, Skipped; Failed and Paused stop it."""

    PENDING = "Pending"
    RUNNING = "Running"
    DONE = "Done"
    FAILED = "Failed"
    PAUSED = "Paused"
    SKIPPED = "Skipped"


class StageState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    BAKING = "Baking"
    PASSED = "Passed"
    FAILED = "Failed"
    PAUSED = "Paused"


class RolloutState(StrEnum):
    RUNNING = "Running"
    DONE = "Done"
    FAILED = "Failed"
    PAUSED = "Paused"


class ClusterRecord(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    context: str
    stage: str
    state: ClusterState = ClusterState.PENDING
    reason: str = ""
    spec: str | None = None  # its upgrade spec's path
    run_id: str | None = None
    pid: int | None = None  # the process running its apply or resume (on ``host``)
    host: str | None = None
    launched_at: dt.datetime | None = None
    launches: int = 0
    job: str | None = None  # its Job in the cluster (in_cluster rollouts)
    next_commands: list[str] = Field(default_factory=list)


class StageRecord(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    name: str
    state: StageState = StageState.PENDING
    bake_until: dt.datetime | None = None  # kept, so a resumed rollout finishes the bake instead of starting it again
    reason: str = ""


class RolloutRecord(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    rollout: str
    target: str
    spec_path: str
    spec_digest: str
    kubeconfig: str | None
    state_store: str  # each cluster's runs: kubernetes:NAMESPACE
    in_cluster: dict[str, str] | None = None  # image, namespace, service_account, helm_repo_url of the Jobs
    repo: str | None = None  # the helm repository name and binary it started with (resume's defaults)
    helm: str | None = None
    state: RolloutState = RolloutState.RUNNING
    reason: str = ""
    started_at: dt.datetime
    updated_at: dt.datetime
    stages: list[StageRecord]
    clusters: dict[str, ClusterRecord]

    def stage_clusters(self, stage: str) -> list[ClusterRecord]:
        return [c for c in self.clusters.values() if c.stage == stage]


def membership_changes(record: RolloutRecord, stages: Sequence[StagePlan]) -> list[str]:
    """How the stages resolved now (the kubeconfig's contexts today) differ from the clusters the rollout started
    with, stage by stage: empty when they are the same."""
    changes = []
    names = [s.name for s in stages]
    recorded = list(dict.fromkeys(c.stage for c in record.clusters.values()))
    if [n for n in names if n in recorded] != recorded or set(names) != set(recorded):
        changes.append(f"stages {', '.join(recorded)} became {', '.join(names)}")
    for stage in stages:
        now = {m.context for m in stage.members}
        then = {c.context for c in record.stage_clusters(stage.name)}
        if now - then:
            changes.append(f"stage {stage.name} now also matches {', '.join(sorted(now - then))}")
        if then - now:
            changes.append(f"stage {stage.name} no longer matches {', '.join(sorted(then - now))}")
    return changes


def check_membership(record: RolloutRecord, stages: Sequence[StagePlan]) -> None:
    """A rollout goes on only with the clusters it started with (bad input, exit 2, naming what changed)."""
    changes = membership_changes(record, stages)
    if changes:
        raise InputError(
            f"rollout {record.rollout}'s clusters changed since it started: {'; '.join(changes)}",
            hint="resume it with the kubeconfig it started with (--kubeconfig PATH), or move its record away and "
            "start a new rollout",
        )


def new_record(
    rollout: Rollout,
    stages: Sequence[StagePlan],
    *,
    kubeconfig: str | None,
    state_store: str,
    now: dt.datetime,
    skipped: dict[str, str],
    target: str,
) -> RolloutRecord:
    """The record of a new rollout to ``target`` (the spec's, canonical): every member Pending, or Skipped with
    its reason (``skipped``)."""
    clusters = {}
    for stage in stages:
        for m in stage.members:
            reason = skipped.get(m.context, "")
            clusters[m.context] = ClusterRecord(
                context=m.context,
                stage=stage.name,
                state=ClusterState.SKIPPED if reason else ClusterState.PENDING,
                reason=reason,
                spec=str(m.spec_path.absolute()) if m.spec_path else None,  # resumable from any folder
            )
    return RolloutRecord(
        rollout=rollout.spec.name,
        target=target,
        spec_path=str(rollout.path.absolute()),
        spec_digest=rollout.digest,
        kubeconfig=kubeconfig,
        state_store=state_store,
        started_at=now,
        updated_at=now,
        stages=[StageRecord(name=s.name) for s in stages],
        clusters=clusters,
    )


def skip_reason(member: Member, refused: tuple[str, str] | None) -> tuple[str | None, str | None]:
    """(why the cluster is skipped, why the rollout is refused): ``skip: true`` skips it; a refused plan
    (code, reason) skips it only with ``allowRefused``, else refuses the whole rollout."""
    if member.skip:
        return "skip: true in the rollout spec", None
    if refused is None:
        return None, None
    code, reason = refused
    if member.allow_refused:
        return f"plan refused ({code}: {reason}); allowRefused: true", None
    return None, f"cluster {member.context}: plan refused ({code}): {reason}"


# ---- what to do with a cluster ---------------------------------------------------------------


class Action(StrEnum):
    LEAVE = "leave"  # done or skipped: never touched again
    MARK_DONE = "mark-done"  # its run reached Done (while the rollout was not watching)
    START = "start"  # no run of it yet: upgrader apply
    FOLLOW = "follow"  # its process still runs: wait for it
    RESUME = "resume"  # its run stopped (killed, paused, failed): upgrader resume RUN, from its own checkpoint
    STOP = "stop"  # its run was rolled back: the rollout cannot go on with it


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def next_action(  # noqa: PLR0911 - one return per row of the decision table
    cluster: ClusterRecord, run_state: str | None, process_alive: bool
) -> Decision:
    """What a (re)started rollout does with ``cluster``: from its record, its run's checkpoint state (None:
    no run of it found) and whether the process the rollout started for it still runs."""
    if cluster.state in (ClusterState.DONE, ClusterState.SKIPPED):
        return Decision(Action.LEAVE, f"{cluster.state.lower()} already")
    if process_alive:
        return Decision(Action.FOLLOW, f"its run is still going (pid {cluster.pid})")
    if run_state is None and cluster.state == ClusterState.RUNNING and cluster.pid is None and cluster.job is None:
        # the rollout stopped between recording a launch and its process id: that process may still be starting
        return Decision(
            Action.STOP,
            f"the rollout stopped while launching run {cluster.run_id} and its process is unknown; no checkpoint of "
            f"it yet: make sure no `upgrader apply --run-id {cluster.run_id}` still runs, then resume the rollout",
        )
    if run_state is None:
        return Decision(Action.START, "no run of it yet" if not cluster.launches else "its last launch left no run")
    if run_state == "Done":
        return Decision(Action.MARK_DONE, f"run {cluster.run_id} is Done")
    if run_state == "RolledBack":
        return Decision(Action.STOP, f"run {cluster.run_id} was rolled back; start a new rollout for this cluster")
    return Decision(Action.RESUME, f"run {cluster.run_id} stopped in {run_state}: resumed from its checkpoint")


def stage_outcome(clusters: Sequence[ClusterRecord]) -> StageState:
    """A stage from its clusters: failed if any failed, paused if any paused, passed once every one is done
    or skipped, else running."""
    states = {c.state for c in clusters}
    if ClusterState.FAILED in states:
        return StageState.FAILED
    if ClusterState.PAUSED in states:
        return StageState.PAUSED
    if states <= {ClusterState.DONE, ClusterState.SKIPPED}:
        return StageState.PASSED
    return StageState.RUNNING


def run_state_of(
    exit_code: int | None, checkpoint_state: str | None, window_refused: str | None = None
) -> tuple[ClusterState, str]:
    """A cluster's state after its process ended: the checkpoint says what its run reached; without a run,
    exit 0 means nothing was left to do (already at the target). A run its own window check refused to
    start now (exit 3, ``window_refused``: why, and when its window opens next) is paused, not failed."""
    if checkpoint_state == "Done":
        return ClusterState.DONE, "run Done"
    if exit_code == 3 and window_refused:  # upgrader's exit code for refused
        return ClusterState.PAUSED, f"outside its maintenance window ({window_refused})"
    if checkpoint_state == "Paused" or exit_code == 5:  # upgrader's exit code for paused
        return ClusterState.PAUSED, "run paused"
    if checkpoint_state is None and exit_code == 0:
        return ClusterState.DONE, "already at the target: nothing to run"
    if checkpoint_state is None:
        return ClusterState.FAILED, f"upgrader exited {exit_code} before starting a run"
    return ClusterState.FAILED, f"run ended {checkpoint_state}" + (f" (exit {exit_code})" if exit_code else "")


def window_refusal(log_lines: Sequence[str]) -> str | None:
    """Why a run's window check refused to start it, from the JSON log lines of its last launch (the
    ``windows.REFUSED_EVENT`` event): its reason and the next opening; None when there is none."""
    for line in reversed(log_lines):
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == REFUSED_EVENT:
            return f"{event.get('reason', '')}; {event.get('next', '')}".strip("; ")
    return None


def outside_window(spec: Spec, now: dt.datetime) -> str | None:
    """Why a cluster's run may not start now (its upgrade spec's maintenance windows are closed), or None.

    The run itself checks every step against its windows; the rollout only does not launch a run that
    would be refused at once, and pauses instead."""
    rules = spec.window_rules()
    if not rules:
        return None
    fit = fits(rules, now, 0, "the run")
    return None if fit.ok else f"outside its maintenance window ({fit.reason}); {fit.next_text()}"


@dataclass(frozen=True)
class JobView:
    """A cluster's Job (``rollout apply --in-cluster``) as read: its pods, and Complete/Failed once finished."""

    active: int
    succeeded: int
    failed: int
    finished: str | None  # "Complete", "Failed" or None (still going: Kubernetes starts a failed pod again)


def job_exit(job: JobView | None, run_state: str | None) -> int | None:
    """A cluster's Job as the exit code its run would have had locally (None: still going).

    The run's checkpoint in the cluster decides first: Done, Paused (a window) and RolledBack end it at
    once. A Failed run is left to the Job while Kubernetes still retries its pod (each retry continues the
    same run); once the Job gives up (or is gone), the cluster failed. A Job that completed without a run is
    exit 0 here; the rollout calls it Done only when the cluster is at the target already (KWOK, or a pod that
    never ran the tool, completes a Job without a run)."""
    if run_state == "Done":
        return 0
    if run_state == "Paused":
        return 5
    if run_state == "RolledBack":
        return 1
    if job is None or job.finished == "Failed":
        return 1
    if job.finished == "Complete":
        return 0 if run_state is None else 1
    return None


# ---- metric gates after the bake -------------------------------------------------------------


def last_wave_namespaces(plan: dict[str, Any]) -> list[str]:
    """The namespaces of a stored plan's last wave (its last hop's), where the metric gates look after a bake."""
    hops = plan.get("hops") or []
    waves = (hops[-1].get("waves") if hops and isinstance(hops[-1], dict) else None) or []
    last = waves[-1] if waves and isinstance(waves[-1], dict) else {}
    return [str(n) for n in last.get("namespaces") or [] if n != "*"]


def metric_gate_failures(port: MetricsPort, namespaces: Sequence[str], spec: Spec) -> list[str]:
    """Each namespace of the last wave whose absolute metric gates fail now (an idle one passes)."""
    window = parse_duration(spec.gates.metrics_window)
    failures = []
    for ns in namespaces:
        sample = port.sample(ns, window)
        failures += assess(None, sample, spec.gates)  # each problem names its namespace
    return failures
