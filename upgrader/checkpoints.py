"""Checkpoints: what a run has done, written before and after every step that changes the cluster.

A ``Checkpoint`` records the run id, the plan and its hash, the run state (and the step a
paused/failed run stopped in), where in the plan the run is, the Helm revision of each
release before and after each step, the redacted values diff, the workloads restarted with
their previous restart annotation, timestamps and errors. A resumed run starts by
observing the cluster and reconciles with this record; it never trusts it alone.

Stores share a small keyword-only interface (``fetch``, ``store``, ``runs``, ``purge``):

- ``FileStore`` (default): one JSON file per run, written atomically (temporary file,
  fsync, rename, fsync of the folder) with mode 0600;
- the Kubernetes store (``upgrader.adapters.kube.SecretCheckpointStore``): one Secret per
  run in a chosen namespace.

Before anything is stored, the serialised checkpoint is scanned for private-key material
and refused if any is found: a checkpoint can never leak the issuer key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from upgrader.errors import InputError, UpgraderError
from upgrader.redaction import redact_text
from upgrader.states import RunState

RUN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,50}[a-z0-9]$")


class ReleaseRevisions(BaseModel):
    """A Helm release's revision before and after each step of this run that touched it."""

    namespace: str
    before: int | None = None
    after: list[int] = Field(default_factory=list)
    chart_before: str | None = None
    charts_after: list[str] = Field(default_factory=list)

    @property
    def revision(self) -> int | None:
        """The revision this run last left the release at (``before`` if it has not touched it)."""
        return self.after[-1] if self.after else self.before

    @property
    def chart(self) -> str | None:
        return self.charts_after[-1] if self.charts_after else self.chart_before


class Restarted(BaseModel):
    """A workload this run restarted, with what its restart annotation was before."""

    kind: str
    namespace: str
    name: str
    hop: int
    previous_restarted_at: str | None = None
    previous_restarted_by: str | None = None


class Mark(BaseModel):
    """A point ``rollback --to-checkpoint ID`` can return to: every step boundary of the run.

    It holds each touched release's revision (and chart version) at that moment and how many
    entries of ``restarted`` existed, so a rollback knows which releases to return and which
    workloads to restart again.
    """

    id: int
    at: dt.datetime
    hop: int
    state: RunState
    revisions: dict[str, int] = Field(default_factory=dict)
    charts: dict[str, str] = Field(default_factory=dict)
    restarted: int = 0


class Event(BaseModel):
    at: dt.datetime
    state: RunState
    reason: str = ""


class Checkpoint(BaseModel):
    model_config = ConfigDict(validate_assignment=True)

    run_id: str
    plan: dict[str, Any]
    plan_hash: str
    spec: dict[str, Any] = Field(default_factory=dict)  # the spec the run started with, minus its values
    spec_has_values: bool = False  # value overrides (maybe certificates) are not stored: resume needs --spec
    state: RunState = RunState.PLANNED
    stopped_in: RunState | None = None
    hop: int = 0
    step: int = 0
    releases: dict[str, ReleaseRevisions] = Field(default_factory=dict)
    values_diff: list[dict[str, Any]] = Field(default_factory=list)
    restarted: list[Restarted] = Field(default_factory=list)
    started_at: dt.datetime
    updated_at: dt.datetime
    errors: list[str] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    marks: list[Mark] = Field(default_factory=list)
    waves_done: list[str] = Field(default_factory=list)  # "<hop>/<wave>" passed its gates and bake time
    reported: list[str] = Field(default_factory=list)  # meshed things the run left alone, and why
    pinned: list[str] = Field(default_factory=list)  # workloads pinned to another proxy: not restarted, not upgraded
    options: dict[str, Any] = Field(default_factory=dict)  # the run's command options, reused on resume
    next_command: str | None = None  # what to do after the last stop (also printed then)
    values_diffs: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)  # "<hop>/<chart>" -> redacted diff
    rolled_back_hops: list[int] = Field(default_factory=list)  # hops `rollback` undid, last first

    def mark(self, now: dt.datetime, state: RunState) -> Mark:
        """Record a step boundary (ids count from 1)."""
        mark = Mark(
            id=len(self.marks) + 1,
            at=now,
            hop=self.hop,
            state=state,
            revisions={n: r.revision for n, r in self.releases.items() if r.revision is not None},
            charts={n: r.chart for n, r in self.releases.items() if r.chart is not None},
            restarted=len(self.restarted),
        )
        self.marks.append(mark)
        return mark

    def find_mark(self, mark_id: int) -> Mark:
        for mark in self.marks:
            if mark.id == mark_id:
                return mark
        known = ", ".join(str(m.id) for m in self.marks) or "none"
        raise InputError(
            f"run {self.run_id} has no checkpoint {mark_id} (it has: {known})",
            hint=f"upgrader status {self.run_id} lists them",
        )

    @classmethod
    def new(cls, run_id: str, plan: dict[str, Any], now: dt.datetime) -> Checkpoint:
        return cls(
            run_id=run_id,
            plan=plan,
            plan_hash=plan_hash(plan),
            started_at=now,
            updated_at=now,
            events=[Event(at=now, state=RunState.PLANNED, reason="run created")],
        )


def plan_hash(plan: dict[str, Any]) -> str:
    """A stable hash of a plan's JSON, so a resumed run knows it runs the same plan."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def serialise(checkpoint: Checkpoint) -> str:
    """JSON text of a checkpoint; raises if it would carry private-key material."""
    text = checkpoint.model_dump_json(indent=2)
    if redact_text(text) != text or "PRIVATE KEY" in text:
        raise UpgraderError(
            f"refusing to store checkpoint {checkpoint.run_id}: it contains private-key material",
            hint="this is a bug: report it; the values diff must be redacted before storing",
        )
    return text


def check_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise InputError(f"{run_id!r} is not a run id", hint="run ids are lowercase letters, digits and dashes")
    return run_id


class CheckpointStore(Protocol):
    def fetch(self, *, run_id: str) -> Checkpoint | None: ...

    def store(self, *, checkpoint: Checkpoint) -> None: ...

    def runs(self) -> list[Checkpoint]: ...

    def purge(self, *, run_id: str) -> None: ...


class FileStore:
    """One ``<run_id>.json`` (mode 0600) per run in a folder (mode 0700)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, run_id: str) -> Path:
        return self.folder / f"{check_run_id(run_id)}.json"

    def fetch(self, *, run_id: str) -> Checkpoint | None:
        path = self._path(run_id)
        if not path.exists():
            return None
        try:
            return Checkpoint.model_validate_json(path.read_text())
        except ValueError as exc:
            raise InputError(f"checkpoint {path} is unreadable: {exc}", hint="restore it or start a new run") from exc

    def store(self, *, checkpoint: Checkpoint) -> None:
        text = serialise(checkpoint)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self._path(checkpoint.run_id)
        fd, tmp = tempfile.mkstemp(prefix=f".{checkpoint.run_id}.", dir=self.folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def runs(self) -> list[Checkpoint]:
        if not self.folder.exists():
            return []
        found = [Checkpoint.model_validate_json(p.read_text()) for p in self.folder.glob("*.json")]
        return sorted(found, key=lambda c: c.started_at)

    def purge(self, *, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(run_id).unlink()


def parse_state_store(text: str) -> tuple[str, str]:
    """``file:DIR`` or ``kubernetes:NAMESPACE`` -> (kind, argument)."""
    kind, _, arg = text.partition(":")
    if kind not in ("file", "kubernetes") or not arg:
        raise InputError(
            f"--state-store {text!r} is not understood",
            hint="use file:DIR (default file:~/.local/state/upgrader) or kubernetes:NAMESPACE",
        )
    return kind, arg
