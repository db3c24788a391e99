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
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from upgrader.audit import Audit
from upgrader.errors import InputError, UpgraderError
from upgrader.inputs import DOCUMENT_CAP, decode, json_digest, load_json, read_json_file, validation_error
from upgrader.redaction import redact_text
from upgrader.states import RunState

RUN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,50}[a-z0-9]$")
NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _utc(moment: dt.datetime) -> dt.datetime:
    """Checkpoint times are UTC; a naive one (only a hand-edited file has them) is read as UTC."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_utc)]


def write_private(target: Path, text: str) -> None:
    """Replace ``target`` atomically with ``text``, readable by its owner only (0600 in a 0700 folder),
    synced to disk with its folder: a crash leaves the old file or the new one, never half of one."""
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
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
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    at: UtcDatetime
    hop: int
    state: RunState
    revisions: dict[str, int] = Field(default_factory=dict)
    charts: dict[str, str] = Field(default_factory=dict)
    restarted: int = 0


class Event(BaseModel):
    at: UtcDatetime
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
    started_at: UtcDatetime
    updated_at: UtcDatetime
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
    # seconds each finished step took, per step kind (upgrader.planning.step_kind; a wave: per round of
    # restarts): later runs against the installation estimate with them whether a step fits a window
    durations: dict[str, list[float]] = Field(default_factory=dict)
    resume_after: UtcDatetime | None = None  # paused by a maintenance window: when the next one opens
    audit: Audit | None = None  # who ran it, plan digest, hop times and outcomes (upgrader.audit)

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

    def restarts(self, *, hop: int | None = None, upto: int | None = None) -> set[tuple[str, str, str, int]]:
        """The distinct restarts recorded, as (kind, namespace, name, hop): of one ``hop``, or of the first
        ``upto`` entries (a mark's count).

        An entry is written before its patch, once per batch: a resume after a stop mid-batch records the
        workloads it restarts again, so ``restarted`` can hold one workload twice for a hop; counted once here.
        """
        entries = self.restarted if upto is None else self.restarted[:upto]
        return {(r.kind, r.namespace, r.name, r.hop) for r in entries if hop is None or r.hop == hop}

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
    return json_digest(plan)


CHECKPOINT_HINT = "restore it from a backup, or move it away and start a new run"


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint in ``path``; anything wrong with it is an InputError naming the file (and the field)."""
    data = read_json_file(path, what="checkpoint", cap=DOCUMENT_CAP, hint=CHECKPOINT_HINT)
    return _validated(data, f"checkpoint {path}", CHECKPOINT_HINT)


def parse_checkpoint(data: bytes, *, source: str, hint: str = CHECKPOINT_HINT) -> Checkpoint:
    """A checkpoint from bytes kept elsewhere (a Secret); ``source`` names it in every error."""
    if len(data) > DOCUMENT_CAP:
        raise InputError(f"{source} is larger than {DOCUMENT_CAP} bytes", hint=hint)
    return _validated(load_json(decode(data, source=source, hint=hint), source=source, hint=hint), source, hint)


def _validated(data: Any, source: str, hint: str) -> Checkpoint:
    if not isinstance(data, dict):
        raise InputError(f"{source} is not a JSON object", hint=hint)
    try:
        return Checkpoint.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, source=source, hint=hint) from None


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
    if not RUN_ID.fullmatch(run_id):
        raise InputError(f"{run_id!r} is not a run id", hint="run ids are lowercase letters, digits and dashes")
    return run_id


@dataclass(frozen=True)
class Unreadable:
    """A checkpoint a store holds but cannot read: where it is (a file, a Secret) and what is wrong."""

    where: str
    problem: str


@dataclass
class Survey:
    """Every run in a store, oldest first, and the checkpoints it could not read (one bad file hides no run)."""

    runs: list[Checkpoint] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)

    def add(self, read: Callable[[], Checkpoint], where: str) -> None:
        try:
            self.runs.append(read())
        except InputError as exc:
            self.unreadable.append(Unreadable(where, exc.message))
        except (OSError, ValueError, RecursionError) as exc:  # what the readers above did not foresee
            self.unreadable.append(Unreadable(where, f"{type(exc).__name__}: {exc}"))

    def sorted(self) -> Survey:
        return Survey(sorted(self.runs, key=lambda c: c.started_at), self.unreadable)


class CheckpointStore(Protocol):
    def fetch(self, *, run_id: str) -> Checkpoint | None: ...

    def store(self, *, checkpoint: Checkpoint) -> None: ...

    def runs(self) -> list[Checkpoint]: ...  # the readable ones, oldest first

    def survey(self) -> Survey: ...

    def purge(self, *, run_id: str) -> None: ...


class FileStore:
    """One ``<run_id>.json`` (mode 0600) per run in a folder (mode 0700)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, run_id: str) -> Path:
        return self.folder / f"{check_run_id(run_id)}.json"

    def fetch(self, *, run_id: str) -> Checkpoint | None:
        path = self._path(run_id)
        if not os.path.lexists(path):  # a dangling symlink is there, and unreadable
            return None
        return read_checkpoint(path)

    def store(self, *, checkpoint: Checkpoint) -> None:
        """Write the checkpoint whole (a temporary file renamed over the old one) or not at all."""
        try:
            self._write(checkpoint)
        except OSError as exc:  # a read-only, full or vanished folder: the last checkpoint stays as it was
            raise UpgraderError(
                f"cannot write checkpoint {self._path(checkpoint.run_id)}: {exc.strerror or exc}; the run stopped "
                f"and the checkpoint keeps its last state ({self.folder} must be a writable folder)",
                hint=f"make {self.folder} writable again, then upgrader resume {checkpoint.run_id}",
            ) from exc

    def _write(self, checkpoint: Checkpoint) -> None:
        write_private(self._path(checkpoint.run_id), serialise(checkpoint))

    def runs(self) -> list[Checkpoint]:
        return self.survey().runs

    def survey(self) -> Survey:
        found = Survey()
        if not self.folder.is_dir():
            return found
        try:
            paths = sorted(self.folder / name for name in os.listdir(self.folder) if name.endswith(".json"))
        except OSError as exc:  # an unreadable folder is an error, not an empty history
            raise InputError(
                f"cannot list the state store {self.folder}: {exc.strerror}", hint="check the folder's permissions"
            ) from exc
        for path in paths:
            found.add(partial(read_checkpoint, path), str(path))
        return found.sorted()

    def purge(self, *, run_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(run_id).unlink()


def parse_state_store(text: str) -> tuple[str, str]:
    """``file:DIR`` or ``kubernetes:NAMESPACE`` -> (kind, argument)."""
    kind, _, arg = text.partition(":")
    if kind not in ("file", "kubernetes") or not arg or "\0" in arg:
        raise InputError(
            f"--state-store {text!r} is not understood",
            hint="use file:DIR (default file:~/.local/state/upgrader) or kubernetes:NAMESPACE",
        )
    if kind == "kubernetes" and not NAMESPACE.fullmatch(arg):
        raise InputError(
            f"--state-store {text!r}: {arg!r} is not a Kubernetes namespace name",
            hint="namespaces are at most 63 lowercase letters, digits and dashes, e.g. kubernetes:linkerd-upgrader",
        )
    return kind, arg
