"""The application layer: sessions, preflight, values, dry runs and runs with their lock.

The CLI parses arguments and renders what this module returns; everything a command
decides lives here or below:

- ``plan_session`` observes the cluster (or takes ``--from`` offline), builds the offering
  and plans; ``resume_session`` rebuilds a run's session from its checkpoint.
- ``preflight`` is the one way checks are gathered and run (the ``preflight`` command, the
  executor's per-hop gate and ``--dry-run`` use it), with the values ``apply`` will send.
- ``dry_run`` says what the first hop would change, changing nothing.
- ``start``, ``resume`` and ``rollback`` run the executor under the installation lock: a
  heartbeat keeps the Lease fresh through helm waits, bakes and rollouts, every action is
  fenced (a run that lost the lock stops without acting), and ``onFailure`` is applied.
  The run's options are stored in its checkpoint and reused on resume.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hmac
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from upgrader import audit, notifications, windows
from upgrader.catalog import Catalog, default_catalog
from upgrader.checkpoints import (
    Checkpoint,
    CheckpointStore,
    FileStore,
    ReleaseRevisions,
    parse_state_store,
    plan_hash,
)
from upgrader.dataplane import Inventory, inventory
from upgrader.discovery import (
    DATA_PLANE_SELECTOR,
    LINKERD_CHARTS,
    Installation,
    carried_revision,
    carried_values,
    observe,
    split_chart,
)
from upgrader.errors import (
    EXIT_REFUSED,
    ClusterUnreachableError,
    InputError,
    NeverDeployedError,
    NotFoundError,
    TransientError,
    UpgraderError,
)
from upgrader.execution import (
    Executor,
    NothingToRollBackError,
    PreflightStoppedError,
    RollbackScope,
    RunStoppedError,
    WindowTooShortError,
)
from upgrader.gatewayapi import observe as gateway_observe
from upgrader.inputs import DOCUMENT_CAP, check_regular_file, json_digest, read_json_file
from upgrader.locking import LockLostError, pid_alive
from upgrader.metrics import public_url
from upgrader.planning import (
    CRDS,
    HA_FILE,
    AdoptSplitCharts,
    Hop,
    Observed,
    Plan,
    RestartWave,
    UpgradeRelease,
    build_offering,
    control_plane_step,
    ha_layers,
    hop_values,
    make_plan,
    step_estimate,
    wants_ha_values,
)
from upgrader.ports import DataPlaneView, HelmRevision, Namespace
from upgrader.preflight import CheckResult
from upgrader.preflight.checks import Context, check_permissions, required_access, run_checks
from upgrader.preflight.observe import gather
from upgrader.redaction import REDACTED
from upgrader.spec import Spec, Window, load_spec, parse_duration
from upgrader.states import TERMINAL, RunState
from upgrader.values import diff

if TYPE_CHECKING:
    from upgrader.adapters.kube_state import LeaseLock
    from upgrader.locking import Heartbeat

log = structlog.get_logger("upgrader")
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Session:
    """What plan, preflight and the runs share: the adapters, the catalog, the spec, the plan."""

    spec: Spec
    catalog: Catalog
    plan: Plan
    kube: Any = None
    helm: Any = None
    namespace: str = "linkerd"
    state_namespace: str | None = None  # a kubernetes: state store's namespace (preflight checks access there)


@dataclass(frozen=True)
class RunOptions:
    """A run's command options: stored in its checkpoint, reused on resume, repeated in hints."""

    min_cert_days: int = 60
    repo: str = "linkerd"

    def as_dict(self) -> dict[str, Any]:
        return {"min_cert_days": self.min_cert_days, "repo": self.repo}

    @classmethod
    def given(cls, **given: Any) -> RunOptions:
        """The options a command was given (None: the default)."""
        return cls(**{k: v for k, v in given.items() if v is not None})

    @classmethod
    def stored(cls, checkpoint: Checkpoint, **given: Any) -> RunOptions:
        """The checkpoint's options, where the command did not give one explicitly."""
        data = {k: v for k, v in checkpoint.options.items() if k in ("min_cert_days", "repo")}
        data.update({k: v for k, v in given.items() if v is not None})
        return cls(**data)


# ---- sessions ------------------------------------------------------------------------------


def helm_binary(helm: str) -> str:
    """The helm executable's path, or bad input saying how to get one."""
    found = shutil.which(helm)
    if not found:
        raise InputError(f"helm binary {helm!r} not found", hint="install helm >= 3.14 or pass --helm PATH")
    return found


def helm_adapter(
    executable: str, kubeconfig: Path | None, context: str | None, spec: Spec | None = None, **kw: Any
) -> Any:
    from upgrader.adapters.helm import HelmAdapter  # noqa: PLC0415 - keep --help fast

    timeout = (spec or Spec()).gates.rollout_timeout
    return HelmAdapter(executable=executable, kubeconfig=kubeconfig, context=context, timeout=timeout, **kw)


def kube_adapter(kubeconfig: Path | None, context: str | None, impersonate: str | None = None) -> Any:
    from upgrader.adapters.kube import KubeAdapter  # noqa: PLC0415

    if kubeconfig is not None:  # the kubernetes client reads it; a pipe or a device must not reach it
        check_regular_file(kubeconfig, what="kubeconfig", hint="pass --kubeconfig PATH of a cluster")
    return KubeAdapter(kubeconfig=kubeconfig, context=context, impersonate=impersonate)


def cluster_adapters(
    kubeconfig: Path | None,
    context: str | None,
    helm: str | None,
    spec: Spec | None = None,
    *,
    impersonate: str | None = None,
) -> tuple[Any, Any]:
    """The kube and helm adapters of one cluster; a missing kubeconfig or helm is bad input."""
    if kubeconfig is not None:
        check_regular_file(kubeconfig, what="kubeconfig", hint="pass --kubeconfig PATH of a cluster")
    helm_port = helm_adapter(helm_binary(helm or "helm"), kubeconfig, context, spec, impersonate=impersonate)
    return kube_adapter(kubeconfig, context, impersonate), helm_port


class ReadOnce:
    """The kube adapter for one observation: each cluster-wide list is read once and shared (discovery and the
    pin inputs both read every meshed pod; at 10,000 pods a second LIST costs seconds). Anything else passes
    through. Never kept past the observation: a run reads the cluster again after every action."""

    def __init__(self, kube: Any) -> None:
        self._kube = kube
        self._read: dict[tuple[str, str | None], Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kube, name)

    def _once(self, key: tuple[str, str | None], read: Callable[[], Any]) -> Any:
        if key not in self._read:
            self._read[key] = read()
        return self._read[key]

    def list_pods(self, *, label_selector: str = "") -> Any:
        return self._once(("pods", label_selector), lambda: self._kube.list_pods(label_selector=label_selector))

    def list_workloads(self, namespace: str | None = None) -> Any:
        return self._once(("workloads", namespace), lambda: self._kube.list_workloads(namespace))

    def list_namespaces(self) -> Any:
        return self._once(("namespaces", None), self._kube.list_namespaces)


def _namespaces(kube: Any, notes: list[str]) -> tuple[Namespace, ...] | None:
    """The namespaces, read once for wave and spec selectors and for pins (None: unreadable, noted)."""
    try:
        return tuple(kube.list_namespaces())
    except UpgraderError as exc:
        if exc.retryable:
            raise
        notes.append(f"namespace labels unreadable ({exc.message}): wave selectors match nothing")
        return None


def _with_pin_inputs(
    observed: Observed,
    kube: Any,
    helm: Any,
    inst: Installation,
    notes: list[str],
    *,
    namespaces: tuple[Namespace, ...] | None = None,  # already read by the caller (None: read them here)
) -> Observed:
    """``observed`` with what the planner finds version pins in: the control plane's user values (those an
    upgrade carries, see ``carried_revision``) and the data plane (namespaces, workloads, meshed pods).
    Unreadable ones leave pins unchecked, with a note. Also whose values are carried when the release's
    last revision is not deployed (the plan says so). A release never deployed stops the plan."""
    cp = next((r for r in inst.releases if r.chart_name in ("linkerd-control-plane", "linkerd2")), None)
    values: dict[str, Any] = {}
    note = None
    try:
        if cp is not None:  # never deployed: NeverDeployedError stops the plan (no working values to carry)
            values, _, note = carried_values(helm, cp.name, cp.namespace)
        view = DataPlaneView(
            namespaces=namespaces if namespaces is not None else tuple(kube.list_namespaces()),
            workloads=tuple(kube.list_workloads()),
            pods=tuple(kube.list_pods(label_selector=DATA_PLANE_SELECTOR)),
            budgets=(),
        )
    except NeverDeployedError:
        raise
    except UpgraderError as exc:
        if exc.retryable:
            raise
        notes.append(f"version pins not checked ({exc.message})")
        return replace(observed, values_carried=note)
    return replace(
        observed,
        control_plane_release=cp.name if cp is not None else observed.control_plane_release,
        control_plane_values=values or {},
        data_plane_view=view,
        values_carried=note,
    )


def _with_gateway_api(observed: Observed, kube: Any, helm: Any, notes: list[str]) -> Observed:
    """``observed`` with the Gateway API route CRDs and linkerd-crds' user values (unreadable: noted, not judged)."""
    try:
        release = observed.release_namespaces.get(CRDS)
        values = helm.get_values(CRDS, release) if release is not None else {}
        # a CRD linkerd-crds' manifest no longer holds is nobody's, whatever its annotations say
        manifest = (
            {CRDS: {o.name for o in helm.manifest(CRDS, release) if o.kind == "CustomResourceDefinition"}}
            if release is not None
            else None
        )
        crds = gateway_observe(kube.list_crds(), manifest)
    except UpgraderError as exc:
        if exc.retryable:
            raise
        notes.append(f"Gateway API CRDs not checked ({exc.message}); preflight crds.gateway-api checks them")
        return observed
    return replace(observed, gateway_api=crds, crds_values=values or {})


def plan_session(
    *,
    to: str | None,
    from_: str | None,
    offline: bool,
    spec_file: Path | None,
    ack: list[str] | None,
    repo: str,
    kubeconfig: Path | None,
    context: str | None,
    helm: str | None,
    impersonate: str | None = None,
    kubernetes: str | None = None,
    windows_given: list[Window] | None = None,
    state_store: str | None = None,
    permissions_first: bool = False,
) -> Session:
    """Observe (or take ``--from`` offline), build what can be installed, and plan.

    ``permissions_first`` (apply): right after discovery, the caller's permissions are reviewed
    (``cluster.permissions``, unless waived) and a refusal stops here, exit 4, before anything else is read
    or written (see ``refuse_without_permissions``).

    ``windows_given`` (``--window``) replace the spec's maintenance windows. With windows, each step's
    estimate comes from the durations earlier runs against this installation recorded in the state
    store (``state_store``; the default store when not given), else from the plan's defaults.
    """
    spec = (load_spec(spec_file) if spec_file else Spec()).with_windows(windows_given or [])
    target_text = to or spec.target
    if not target_text:
        raise InputError("no target version", hint="pass --to VERSION (or set target: in the spec)")
    if offline != (from_ is not None):
        raise InputError("--from and --offline go together", hint="plan offline with --from VERSION --offline")
    catalog = default_catalog()
    target = catalog.parse(target_text)
    if offline:
        offline_offering, offline_notes = build_offering(catalog, None)
        result = make_plan(
            Observed(control_plane=catalog.parse(from_ or ""), kubernetes=kubernetes),
            target,
            offline_offering,
            catalog,
            spec,
            acks=frozenset(ack or []),
            offering_notes=offline_notes,
        )
        return Session(spec, catalog, result)
    kube, helm_port = cluster_adapters(kubeconfig, context, helm, spec, impersonate=impersonate)
    notes: list[str] = []
    reads = ReadOnce(kube)
    try:
        inst = observe(reads, helm_port)
    except UpgraderError as exc:
        if exc.retryable:
            raise
        notes.append(f"discovery failed: {exc.message}")
        inst = None
    if permissions_first and "cluster.permissions" not in spec.waivers and not spec.dry_run:
        refuse_without_permissions(kube, inst, state_store)
    observed = Observed(control_plane=None)
    if inst is not None:
        namespaces = _namespaces(reads, notes)
        labels = {n.name: n.labels for n in namespaces or ()}
        observed = Observed(
            control_plane=catalog.parse(inst.control_plane_version) if inst.control_plane_version else None,
            data_plane=inst.proxies,
            kubernetes=inst.kubernetes_version,
            extensions=inst.extensions,
            extension_releases={
                r.chart_name: (r.name, r.namespace) for r in inst.releases if r.chart_name in inst.extensions
            },
            control_plane_namespace=inst.control_plane_namespace or "linkerd",
            namespace_labels=labels,
            namespaces=frozenset(labels) or None,  # a cluster always has namespaces: none read is unknown
            release_namespaces={r.name: r.namespace for r in inst.releases},
            release_charts={r.name: r.chart_version for r in inst.releases},
            high_availability=inst.high_availability,
            ha_evidence=inst.ha_evidence,
        )
        observed = _with_pin_inputs(observed, reads, helm_port, inst, notes, namespaces=namespaces)
        observed = _with_gateway_api(observed, kube, helm_port, notes)
        log.info(
            "observed",
            control_plane=str(observed.control_plane),
            install_method=inst.install_method,
            meshed_namespaces=len(inst.proxies),
            kubernetes=inst.kubernetes_version,
        )
    charts = ("linkerd-control-plane", "linkerd-crds", "linkerd2", "linkerd-viz")
    try:
        found = {c: helm_port.search_repo(repo, c) for c in charts}
    except UpgraderError as exc:
        notes.append(f"helm repository {repo!r} could not be searched: {exc.message}")
        found = {c: None for c in charts}
    repo_rows = None if found["linkerd-control-plane"] is None else {c: r or [] for c, r in found.items()}
    offering, offering_notes = build_offering(catalog, repo_rows)
    if repo_rows is None:
        notes.append(f"helm repository {repo!r} is not added; chart versions come from the bundled catalog")
    durations = _plan_durations(spec, state_store, kube, observed.control_plane_namespace, notes)
    result = make_plan(
        observed,
        target,
        offering,
        catalog,
        spec,
        acks=frozenset(ack or []),
        offering_notes=notes + offering_notes,
        durations=durations,
    )
    return Session(spec, catalog, result, kube, helm_port, observed.control_plane_namespace)


def refuse_without_permissions(kube: Any, inst: Installation | None, state_store: str | None) -> None:
    """Review the permissions a run needs in the namespaces discovery found (preflight's gather asks the same)
    and stop with ``cluster.permissions``'s message (exit 4) when any is refused; nothing was changed."""
    namespace = (inst.control_plane_namespace if inst else None) or "linkerd"
    releases = sorted(
        {namespace} | {r.namespace for r in (inst.releases if inst else ()) if r.chart_name in LINKERD_CHARTS}
    )
    kind, arg = parse_state_store(state_store) if state_store else ("file", "")
    errors: dict[str, str] = {}
    try:
        reviewed = kube.review_access(
            required_access(namespace, releases=releases, state=arg if kind == "kubernetes" else None)
        )
    except UpgraderError as exc:
        errors["access"], reviewed = exc.message, []
    check = check_permissions(reviewed, errors)
    if check.result == "error":
        log.error("preflight-check", id=check.id, message=check.message, hint=check.hint)
        raise PreflightStoppedError(f"preflight failed before hop 1: {check.id}: {check.message}", hint=check.hint)


def _plan_durations(
    spec: Spec, state_store: str | None, kube: Any, namespace: str, notes: list[str]
) -> dict[str, list[float]]:
    """Step durations recorded by earlier runs against this installation (only read when the spec has windows)."""
    if not spec.window_rules():
        return {}
    try:
        return recorded_durations(open_store(state_store, kube), namespace, cluster_of(kube))
    except UpgraderError as exc:
        notes.append(f"step durations of earlier runs not read ({exc.message}): estimates are the plan defaults")
        return {}


def cluster_of(kube: Any) -> str:
    """The cluster a run acts on, as its API server's ``scheme://host:port`` ("" when unknown)."""
    host = getattr(getattr(getattr(kube, "api_client", None), "configuration", None), "host", None)
    return notifications.url_host(host) if isinstance(host, str) and host else ""


def recorded_durations(
    store: CheckpointStore, namespace: str, cluster: str, *, besides: str | None = None
) -> dict[str, list[float]]:
    """Per step kind, the durations earlier runs in ``store`` recorded against this installation: the
    control plane in ``namespace`` on the API server ``cluster`` (a staging and a production cluster
    sharing one file store never mix)."""
    runs = [
        c
        for c in store.runs()
        if c.run_id != besides
        and c.durations
        and c.options.get("namespace", "linkerd") == namespace
        and c.options.get("cluster", "") == cluster
    ]
    return windows.history(c.durations for c in runs)


def next_step_estimate(session: Session, checkpoint: Checkpoint, durations: dict[str, list[float]]) -> tuple[int, str]:
    """What the run's next step needs and its name: ``planning.step_estimate``, the function the executor's
    gate asks too, with the durations earlier runs and this one recorded, and a wave's workloads this
    run has not restarted yet (the plan's count less the checkpoint's restarts)."""
    hops = session.plan.hops
    if not 0 <= checkpoint.hop < len(hops) or not hops[checkpoint.hop].steps:
        return 0, "the run"
    hop = hops[checkpoint.hop]
    step = hop.steps[checkpoint.step if 0 <= checkpoint.step < len(hop.steps) else 0]
    recorded = windows.history([durations, checkpoint.durations])
    wave, pending = None, None
    if isinstance(step, RestartWave):
        wave = hop.waves[step.wave]
        if f"{checkpoint.hop}/{step.wave}" in checkpoint.waves_done:
            pending = {}
        elif wave.workloads:
            done: dict[str, int] = {}  # one per distinct workload: a resume may have recorded one twice
            for _kind, namespace, _name, _hop in checkpoint.restarts(hop=checkpoint.hop):
                done[namespace] = done.get(namespace, 0) + 1
            pending = {ns: max(0, wave.workloads.get(ns, 0) - done.get(ns, 0)) for ns in wave.namespaces}
    return step_estimate(step, wave, session.spec, recorded, pending), f"the next step ({step.name})"


WAIT_SLICE = 300.0  # --wait-for-window: at most this long between progress lines


class OutsideWindowError(UpgraderError):
    """The run may not start (or go on) now: outside the maintenance windows, or no room for its next step."""

    exit_code = EXIT_REFUSED


def wait_for_window(
    session: Session,
    checkpoint: Checkpoint,
    command: str,
    *,
    wait: bool,
    clock: Clock,
    sleep: Callable[[float], None],
    say: Callable[[str], None],
    durations: dict[str, list[float]] | None = None,
) -> None:
    """Return once the next step of the run fits in an open window; refuse (exit 3) or, with ``wait``, sleep.

    ``command`` is the user's command, repeated in the hint with ``--wait-for-window``. A step no
    window can ever hold is refused at once (waiting would never end).
    """
    rules = session.spec.window_rules()
    if not rules:
        return
    seconds, what = next_step_estimate(session, checkpoint, durations or {})
    subject = "the run" if checkpoint.state == RunState.PLANNED else f"run {checkpoint.run_id}"
    too_long = windows.capacity(rules, clock()).too_long(what, seconds)
    if too_long is not None:
        raise OutsideWindowError(
            f"{subject} cannot go on in these maintenance windows: {too_long}",
            hint=f'give a window long enough for it: {command} --window "DAYS HH:MM-HH:MM ZONE" '
            "(or widen the spec's window)",
        )
    while True:
        now = clock()
        fit = windows.fits(rules, now, seconds, what)
        if fit.ok:
            return
        if not wait or fit.next_opening is None:
            log.warning(
                windows.REFUSED_EVENT,
                run_id=checkpoint.run_id,
                reason=fit.reason,
                opens=fit.next_opening.start.isoformat() if fit.next_opening else None,
                next=fit.next_text(),
            )
            raise OutsideWindowError(
                f"{subject} does not start now: {fit.reason}; {fit.next_text()}",
                hint=f"run it then, or wait for it: {command} --wait-for-window",
            )
        left = (fit.next_opening.start - now).total_seconds()
        say(f"waiting for the maintenance window: {fit.next_text()} (in {windows.duration_text(left)})")
        log.info("window-wait", run_id=checkpoint.run_id, opens=fit.next_opening.start.isoformat(), seconds=left)
        sleep(min(max(left, 0.5), WAIT_SLICE))


def load_plan_file(path: Path) -> dict[str, Any]:
    """A plan written by ``plan -o json``, checked against its digest (apply compares from, to, hops' targets).

    Every problem is bad input (exit 2, nothing was changed): not a file, not JSON, not a plan (each
    field named), no digest, or content that no longer matches its digest (edited after review).
    """
    hint = "write one with: upgrader plan --to VERSION -o json --out plan.json"
    saved = read_json_file(path, what="plan", cap=DOCUMENT_CAP, hint=hint)
    Plan.from_json(saved, source=f"plan {path}")  # its shape: InputError naming each field
    body = {k: v for k, v in saved.items() if k != "digest"}
    digest = saved.get("digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise InputError(
            f"plan {path} has no digest, so it cannot be told from an edited plan",
            hint="plan again with: upgrader plan --to VERSION -o json --out plan.json, review it, then apply it",
        )
    if not hmac.compare_digest(digest.removeprefix("sha256:"), json_digest(body)):
        raise InputError(
            f"plan {path} does not match its digest: it was edited after it was written",
            hint="plan again with: upgrader plan --to VERSION -o json --out plan.json, review it, then apply it",
        )
    return body


def check_plan_file(saved: dict[str, Any], plan: Plan, path: Path) -> None:
    """A reviewed plan is applied only while the cluster still gives the same plan."""
    raw = saved.get("hops")
    hops: list[Any] = raw if isinstance(raw, list) else []
    if saved.get("from") != plan.from_ or [h.get("to") if isinstance(h, dict) else None for h in hops] != [
        h.to for h in plan.hops
    ]:
        raise InputError(
            f"plan {path} no longer matches the cluster (it starts at {saved.get('from')}, the "
            f"cluster runs {plan.from_})",
            hint="plan again and review the new plan",
        )
    # the reviewed Gateway API decision: the choice, the CRDs it was made on, and what each hop sends
    reviewed = (
        saved.get("gateway_api", "auto"),
        saved.get("gateway_api_crds"),
        [h.get("crds_values", {}) if isinstance(h, dict) else None for h in hops],
    )
    now = (plan.gateway_api, plan.gateway_api_crds, [h.crds_values for h in plan.hops])
    if reviewed != now:
        raise InputError(
            f"plan {path} decided the Gateway API CRDs differently (gatewayAPI: {reviewed[0]}, linkerd-crds "
            f"switches per hop {reviewed[2]}); against the cluster and spec now: gatewayAPI: {now[0]}, {now[2]}",
            hint="plan again and review the new plan's gateway-api notes",
        )


def resume_session(
    checkpoint: Checkpoint,
    *,
    spec_file: Path | None,
    kubeconfig: Path | None,
    context: str | None,
    helm: str | None,
    need_values: bool = True,
    impersonate: str | None = None,
) -> Session:
    """A run's session again: its stored plan (checked against its hash) and spec."""
    if plan_hash(checkpoint.plan) != checkpoint.plan_hash:
        raise InputError(
            f"run {checkpoint.run_id}: its stored plan does not match its hash",
            hint="the checkpoint was edited; start a new run",
        )
    saved = Plan.from_json(checkpoint.plan, source=f"run {checkpoint.run_id}'s stored plan")
    if spec_file is None and checkpoint.spec_has_values and need_values:
        raise InputError(
            f"run {checkpoint.run_id} was started with value overrides or URL credentials, which checkpoints "
            "never store",
            hint=f"pass the same spec again: upgrader resume {checkpoint.run_id} --spec FILE",
        )
    spec = load_spec(spec_file) if spec_file else Spec.model_validate(checkpoint.spec or {})
    kube = kube_adapter(kubeconfig, context, impersonate)
    helm_port = helm_adapter(helm_binary(helm or "helm"), kubeconfig, context, spec, impersonate=impersonate)
    namespace = checkpoint.options.get("namespace") or next(
        (r.namespace for name, r in checkpoint.releases.items() if name != "linkerd2"), "linkerd"
    )
    return Session(spec, default_catalog(), saved, kube, helm_port, str(namespace))


# ---- state stores --------------------------------------------------------------------------


def default_store() -> str:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return f"file:{base / 'upgrader' / 'runs'}"


def open_store(state_store: str | None, kube: Any | None) -> CheckpointStore:
    kind, arg = parse_state_store(state_store or default_store())
    if kind == "file":
        folder = Path(arg).expanduser()
        if os.path.lexists(folder) and not folder.is_dir():
            what = "a file" if folder.exists() else "a dangling link"
            raise InputError(
                f"--state-store file:{folder} is {what}, not a folder",
                hint="pass file:DIR of a folder (it is created if missing), or kubernetes:NAMESPACE",
            )
        return FileStore(folder)
    if kube is None:
        raise InputError("kubernetes: state stores need a cluster", hint="pass --kubeconfig, or use file:DIR")
    from upgrader.adapters.kube_state import SecretCheckpointStore  # noqa: PLC0415

    return SecretCheckpointStore(kube.api_client, arg)


def store_for(
    state_store: str | None, kubeconfig: Path | None, context: str | None, impersonate: str | None = None
) -> CheckpointStore:
    """The state store of a command that has no session: a cluster client only for kubernetes: stores."""
    needs_cluster = parse_state_store(state_store or default_store())[0] == "kubernetes"  # bad input before a client
    return open_store(state_store, kube_adapter(kubeconfig, context, impersonate) if needs_cluster else None)


def load_run(store: CheckpointStore, run: str | None, *, unfinished: bool = False) -> Checkpoint:
    if run:
        found = store.fetch(run_id=run)
        if found is None:
            raise InputError(f"no run {run} in the state store", hint="upgrader history lists the runs")
        return found
    survey = store.survey()
    for bad in survey.unreadable:
        log.warning("unreadable-checkpoint", where=bad.where, problem=bad.problem)
    runs = [c for c in survey.runs if not unfinished or c.state not in TERMINAL]
    if not runs:
        if survey.unreadable:
            last = survey.unreadable[-1]
            raise InputError(
                f"no readable run to act on in the state store: cannot read {last.where}: {last.problem}",
                hint="restore the checkpoint from a backup or move it away; or name a run: upgrader history",
            )
        raise InputError("no run to act on in the state store", hint="upgrader history lists the runs")
    return runs[-1]


# ---- preflight and values ------------------------------------------------------------------


def values_sender(session: Session, plan: Plan, repo: str) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """What preflight renders: the values the first hop's control-plane step will send."""
    hop = plan.hops[0] if plan.hops else None
    step = control_plane_step(hop) if hop is not None else None
    if hop is None or step is None:
        return None
    chart, version = step.chart or step.release, step.chart_version

    def send(user: dict[str, Any]) -> dict[str, Any]:
        defaults = session.helm.show_values(f"{repo}/{chart}", version) if version else {}
        ha_target, ha_installed = _ha_layers(session, hop, step, repo)
        out = hop_values(
            hop,
            session.spec,
            session.catalog,
            user_values=user,
            target_defaults=defaults,
            ha_target=ha_target,
            ha_installed=ha_installed,
        )
        return out.effective

    return send


def _values_release(step: UpgradeRelease | AdoptSplitCharts) -> tuple[str, str]:
    """The release whose user values a control-plane step sends (the split: the linkerd2 release it replaces)."""
    if isinstance(step, AdoptSplitCharts):
        return step.legacy_release, step.legacy_namespace
    return step.release, step.namespace


def _ha_layers(
    session: Session, hop: Hop, step: UpgradeRelease | AdoptSplitCharts, repo: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The values-ha.yaml layers of ``hop`` (target chart's, the carried revision's chart's), read with helm;
    see ``ha_layers``."""
    if not wants_ha_values(hop, session.spec):
        return None, None
    try:  # whose values-ha.yaml the carried user values hold: the last deployed revision's chart
        carried = carried_revision(session.helm.history(*_values_release(step)))
    except NotFoundError:
        carried = None
    return ha_layers(
        hop,
        session.spec,
        split_chart(carried.chart) if carried is not None else None,
        lambda c, v: session.helm.chart_file(f"{repo}/{c}", v, HA_FILE),
    )


def preflight(
    session: Session,
    plan: Plan | None = None,
    *,
    min_cert_days: int,
    repo: str,
    now: dt.datetime | None = None,
    offset: int = 0,
) -> list[CheckResult]:
    """Gather once and run every check for ``plan``'s first hop (the session's plan by default)."""
    plan = plan or session.plan
    snapshot = gather(
        session.kube,
        session.helm,
        plan,
        namespace=session.namespace,
        repo=repo,
        values_to_send=values_sender(session, plan, repo),
        state_namespace=session.state_namespace,
        stop_on_refused="cluster.permissions" not in session.spec.waivers,  # nothing else matters until granted
    )
    return run_checks(
        Context(
            snapshot,
            plan,
            session.catalog,
            session.spec,
            now=now or utc_now(),
            min_cert_days=min_cert_days,
            plan_offset=offset,  # hop numbers in messages count from the run's first hop
        )
    )


# ---- dry run -------------------------------------------------------------------------------


@dataclass
class DryRun:
    """What the first hop would do, with nothing changed."""

    checks: list[CheckResult]
    waves: list[tuple[str, Inventory]] = field(default_factory=list)
    chart: str | None = None
    chart_version: str | None = None
    values_diff: list[dict[str, Any]] = field(default_factory=list)
    server_accepted: list[tuple[str, str]] = field(default_factory=list)  # (chart, version)
    ha_values: str = ""  # which chart's values-ha.yaml the values layer (HA installations)
    values_source: str = ""  # whose user values are carried (the last deployed revision's when the last failed)


def dry_run(session: Session, options: RunOptions) -> DryRun:
    hop = session.plan.hops[0]
    report = DryRun(checks=preflight(session, min_cert_days=options.min_cert_days, repo=options.repo))
    kube, dp = session.kube, session.spec.data_plane
    view = DataPlaneView(
        tuple(kube.list_namespaces()), tuple(kube.list_workloads()), tuple(kube.list_pods()), tuple(kube.list_budgets())
    )
    for wave in hop.waves:
        inv = inventory(
            view,
            wave.namespaces,
            exclude_namespaces=dp.exclude_namespaces,
            include_selector=dp.include_selector or None,
            exclude_selector=dp.exclude_selector or None,
        )
        report.waves.append((wave.name, inv))
    step = control_plane_step(hop)
    if step is None or step.chart_version is None:
        return report
    split = isinstance(step, AdoptSplitCharts)
    release, release_ns = _values_release(step)
    chart = step.chart or step.release
    user, carried, note = carried_values(session.helm, release, release_ns)
    report.values_source = note or f"user values of {release} revision {carried.revision}"
    ha_target, ha_installed = _ha_layers(session, hop, step, options.repo)
    out = hop_values(
        hop,
        session.spec,
        session.catalog,
        user_values=user,
        target_defaults=session.helm.show_values(f"{options.repo}/{chart}", step.chart_version),
        ha_target=ha_target,
        ha_installed=ha_installed,
    )
    report.chart, report.chart_version = chart, step.chart_version
    if out.ha_values:
        report.ha_values = (
            f"HA: {HA_FILE} of {chart} {step.chart_version} applied under your values "
            f"({len(out.ha_removed)} setting(s) of the installed chart's {HA_FILE} taken out of them)"
        )
    report.values_diff = diff(session.helm.get_values(release, release_ns, all_values=True), out.effective)
    if split:
        return report  # the split installs new releases: helm cannot dry-run an adoption
    for s in hop.steps:
        if not isinstance(s, UpgradeRelease) or s.chart_version is None or s.state == RunState.UPGRADING_EXTENSIONS:
            continue
        values = out.values if s.send_values else {}
        session.helm.upgrade(
            s.release,
            f"{options.repo}/{s.chart}",
            s.namespace,
            values,
            version=s.chart_version,
            reset_values=out.reset_values if values else False,
            reuse_values=out.reuse_values if values else False,
            dry_run=True,
        )
        report.server_accepted.append((s.chart or "", s.chart_version))
    return report


# ---- runs under the lock -------------------------------------------------------------------


def _other_pid_alive(pid: int) -> bool:
    """A live process other than this one (a run restarted in the same container may reuse a pid)."""
    return pid != os.getpid() and pid_alive(pid)


def holder_id(run_id: str) -> str:
    return f"{_user()}@{socket.gethostname()}:{os.getpid()}/{run_id}"


def new_checkpoint(
    session: Session, options: RunOptions, clock: Clock = utc_now, *, run_id: str | None = None
) -> Checkpoint:
    """A new run of the session's plan: its spec (without values or URL credentials) and options stored.

    ``run_id`` names the run (``apply --run-id``: a Job's pods share one); a dated random id otherwise.
    """
    now = clock()
    run_id = run_id or f"run-{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    checkpoint = Checkpoint.new(run_id, session.plan.as_json(), now)
    stored_spec = session.spec.model_dump(mode="json", by_alias=True)
    stored_spec["values"]["overrides"] = {}
    url = stored_spec["gates"].get("prometheusUrl") or ""
    stored_spec["gates"]["prometheusUrl"] = public_url(url) if url else None  # credentials are not stored either
    hook = (stored_spec.get("notify") or {}).get("webhookUrl") or ""
    if hook:  # a webhook URL is a secret (a token in its path, query or user:pass@): stored as scheme://host/<redacted>
        stored_spec["notify"]["webhookUrl"] = notifications.redacted_url(hook)
    checkpoint.spec = stored_spec
    checkpoint.spec_has_values = (
        bool(session.spec.values.overrides) or public_url(url) != url or session.spec.notify is not None
    )
    checkpoint.options = {**options.as_dict(), "namespace": session.namespace, "cluster": cluster_of(session.kube)}
    return checkpoint


@dataclass
class RunHooks:
    """What the CLI hands in: progress display (or None) and a closer for it."""

    on_progress: Callable[[str, int, int], None] | None = None
    close: Callable[[], None] = lambda: None


def rollback_scope(
    session: Session,
    store: CheckpointStore,
    checkpoint: Checkpoint,
    *,
    options: RunOptions,
    include_crds: bool = False,
    to_checkpoint: int | None = None,
) -> RollbackScope:
    """What ``rollback`` would do, observed now with nothing changed (shown before it asks to go on)."""
    from upgrader.adapters.cluster_ports import ClusterPorts  # noqa: PLC0415

    ports = ClusterPorts(
        session.kube,
        session.helm,
        preflight=lambda _plan, _index: [],
        timeout_seconds=parse_duration(session.spec.gates.rollout_timeout),
    )
    try:
        executor = Executor(
            session.plan,
            session.spec,
            session.catalog,
            ports,
            store,
            checkpoint.model_copy(deep=True),  # deciding writes nothing
            clock=utc_now,
            namespace=session.namespace,
            repo=options.repo,
        )
        return executor.rollback_scope(include_crds=include_crds, to_checkpoint=to_checkpoint)
    finally:
        ports.close()


def execute(
    session: Session,
    store: CheckpointStore,
    checkpoint: Checkpoint,
    action: str,
    *,
    options: RunOptions,
    take_over: bool = False,
    own_lock_only: bool = False,
    include_crds: bool = False,
    to_checkpoint: int | None = None,
    hooks: RunHooks | None = None,
    clock: Clock = utc_now,
    command: str | None = None,
    wait_for: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = lambda _line: None,
) -> Checkpoint:
    """Run (``apply``), resume or roll back under the lock, with the heartbeat and onFailure.

    With maintenance windows, ``apply`` and ``resume`` first wait for room in a window for the run's
    next step (``wait_for``: sleep until then, with ``say`` lines; else refuse, exit 3); the executor
    then checks every step against the window, with durations earlier runs recorded.
    """
    from upgrader.adapters import retrying  # noqa: PLC0415
    from upgrader.adapters.cluster_ports import ClusterPorts, RetryingMetrics  # noqa: PLC0415
    from upgrader.adapters.kube_state import SecretCheckpointStore  # noqa: PLC0415
    from upgrader.adapters.prometheus import PrometheusMetrics  # noqa: PLC0415

    hooks = hooks or RunHooks()
    if isinstance(store, SecretCheckpointStore):
        session.state_namespace = store.namespace
    if action == "resume" and RunState.ROLLING_BACK in (checkpoint.state, checkpoint.stopped_in):
        raise InputError(
            f"run {checkpoint.run_id} stopped while rolling back; it can only go on rolling back",
            hint=f"upgrader rollback {checkpoint.run_id}",
        )
    cluster = str(checkpoint.options.get("cluster") or cluster_of(session.kube))
    checkpoint.options = {**options.as_dict(), "namespace": session.namespace, "cluster": cluster}
    durations: dict[str, list[float]] = {}
    if action != "rollback" and session.spec.window_rules():  # rollbacks are never held by windows
        durations = recorded_durations(store, session.namespace, cluster, besides=checkpoint.run_id)
        again = command or _command_of(action, checkpoint)
        wait_for_window(
            session, checkpoint, again, wait=wait_for, clock=clock, sleep=sleep, say=say, durations=durations
        )
    lock, me, heartbeat = _hold_lock(session, checkpoint, take_over=take_over, own_lock_only=own_lock_only, clock=clock)

    def preflight_for(plan: Plan, index: int) -> list[CheckResult]:
        return preflight(
            session, plan, min_cert_days=options.min_cert_days, repo=options.repo, now=clock(), offset=index
        )

    ports = ClusterPorts(
        session.kube,
        session.helm,
        preflight=preflight_for,
        timeout_seconds=parse_duration(session.spec.gates.rollout_timeout),
    )
    url = session.spec.gates.prometheus_url
    notifier = _notifier(session.spec)
    executor = Executor(
        session.plan,
        session.spec,
        session.catalog,
        ports,
        store,
        checkpoint,
        clock=clock,
        namespace=session.namespace,
        repo=options.repo,
        rollout_timeout=parse_duration(session.spec.gates.rollout_timeout),
        metrics=RetryingMetrics(PrometheusMetrics(url)) if url else None,
        on_progress=hooks.on_progress,
        lock=heartbeat,
        durations=durations,
        on_transition=_sender(notifier, checkpoint, _installation(session)) if notifier else None,
    )
    try:
        checkpoint.audit = audit.begin(
            checkpoint.audit,
            plan=checkpoint.plan,
            plan_digest=f"sha256:{checkpoint.plan_hash}",
            by=who_runs(),
            action=action,
            now=clock(),
        )
        store.store(checkpoint=checkpoint)
        if action == "rollback":
            return executor.rollback(include_crds=include_crds, to_checkpoint=to_checkpoint)
        if action == "resume" and _already_done(session, checkpoint, executor):
            return checkpoint
        return executor.run()
    except (PreflightStoppedError, WindowTooShortError):
        raise  # nothing was changed, or a window too short for a step: nothing to roll back, whatever onFailure says
    except RunStoppedError as exc:
        if session.spec.on_failure == "rollback" and action != "rollback":
            raise on_failure_rollback(executor, exc) from exc
        raise
    except Exception as exc:  # a lost lock or API: no rollback, no checkpoint write (see _stopped_outside)
        raise _stopped_outside(exc, checkpoint) from exc
    except KeyboardInterrupt:
        log.warning("interrupted", run_id=checkpoint.run_id, state=str(checkpoint.state))
        raise UpgraderError(
            f"interrupted in {checkpoint.state}; the checkpoint is saved",
            hint=f"upgrader resume {checkpoint.run_id} (or upgrader rollback {checkpoint.run_id})",
        ) from None
    finally:
        heartbeat.stop()
        retrying.wait_for_the_api(False)
        ports.close()
        hooks.close()
        _release(lock, me, notifier, session.spec)


def _command_of(action: str, checkpoint: Checkpoint) -> str:
    """The command that goes on with the run (``--spec FILE`` when its spec holds what checkpoints never store)."""
    if action == "apply":
        return "upgrader apply"
    return f"upgrader resume {checkpoint.run_id}{' --spec FILE' if checkpoint.spec_has_values else ''}"


def _release(lock: LeaseLock, me: str, notifier: Any, spec: Spec) -> None:
    """The lock first (waiting for unsent events must not keep another run out), then the notifier."""
    try:
        lock.release(me)
    except UpgraderError as exc:  # never hide why the run ended; the lease expires by itself
        log.warning("lock-release-failed", reason=exc.message)
    finally:
        if notifier is not None:
            notifier.close(wait=notify_flush_seconds(spec))


def who_runs() -> audit.Actor:
    """Who runs this command: the pod's ServiceAccount in a cluster, else user@host."""
    folder = Path(audit.SERVICE_ACCOUNT_DIR)

    def read(name: str) -> str | None:
        try:
            return (folder / name).read_text(encoding="utf-8", errors="replace")[:65536]
        except OSError:
            return None

    return audit.actor(os.environ, read, user=_user, host=socket.gethostname())


def _user() -> str:
    """The login name; a pod with an arbitrary UID and no USER or LOGNAME has none: ``uid:<n>``."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # getpwuid finds no entry for the UID
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _notifier(spec: Spec) -> Any:
    """The webhook notifier of ``spec.notify`` (started), or None."""
    from upgrader.adapters.webhook import WebhookNotifier  # noqa: PLC0415

    if spec.notify is None:
        return None
    url = spec.notify.webhook_url
    if REDACTED in url:  # a resumed run's stored spec: the URL's credentials were never stored
        log.warning(
            "notify-off",
            url=url,
            reason="the webhook URL's credentials are not stored; pass --spec to notify on resume",
        )
        return None
    log.info("notify", url=notifications.redacted_url(url))
    return WebhookNotifier(url, timeout=parse_duration(spec.notify.timeout), retries=spec.notify.retries)


def notify_flush_seconds(spec: Spec) -> float:
    """How long a run's end waits for unsent events: one attempt's timeout and a second, at most 10 s."""
    return min(10.0, parse_duration(spec.notify.timeout) + 1.0) if spec.notify else 0.0


def _installation(session: Session) -> dict[str, str]:
    return {"namespace": session.namespace, "cluster": cluster_of(session.kube)}


def _sender(
    notifier: Any, checkpoint: Checkpoint, installation: dict[str, str]
) -> Callable[[audit.Transition, list[audit.Notice]], None]:
    def send(change: audit.Transition, notices: list[audit.Notice]) -> None:
        plan_from, plan_to = checkpoint.plan.get("from"), checkpoint.plan.get("to")
        for payload in notifications.events_for(
            change, notices, plan_from=plan_from, plan_to=plan_to, installation=installation
        ):
            notifier.send(payload)

    return send


def _hold_lock(
    session: Session, checkpoint: Checkpoint, *, take_over: bool, clock: Clock, own_lock_only: bool = False
) -> tuple[LeaseLock, str, Heartbeat]:
    """Take the installation's lock and start its heartbeat; from here the retry policy waits for an API
    that does not answer (a restarting API server is ridden out) until ``wait_for_the_api(False)``."""
    from upgrader.adapters import retrying  # noqa: PLC0415
    from upgrader.adapters.kube_state import LeaseLock  # noqa: PLC0415
    from upgrader.locking import Heartbeat, holder_alive_here, holder_gone_here  # noqa: PLC0415

    lock = LeaseLock(session.kube.api_client, session.namespace, session.namespace)
    me = holder_id(checkpoint.run_id)
    why = lock.acquire(
        me,
        clock(),
        take_over=take_over,
        own_run_only=own_lock_only,
        holder_gone=lambda holder: holder_gone_here(holder, socket.gethostname(), pid_alive),
        holder_alive=lambda holder: holder_alive_here(holder, socket.gethostname(), _other_pid_alive),
    )
    log.info("lock", holder=me, lease=f"{session.namespace}/{lock.name}", reason=why)
    heartbeat = Heartbeat(lock, clock, interval=lock.duration_seconds / 3, lease_seconds=lock.duration_seconds)
    retrying.wait_for_the_api(True)
    heartbeat.start()
    return lock, me, heartbeat


def _stopped_outside(exc: Exception, checkpoint: Checkpoint) -> UpgraderError:
    """The error of a run stopped outside a step, naming the command that continues it (else ``exc`` is re-raised).

    A lost lock: another run may own the installation now. A TransientError (or an outside failure that
    escaped an adapter, e.g. urllib3's MaxRetryError): the retry policy gave up fencing an action or
    writing the checkpoint. Either way the checkpoint keeps the last state written whole, and resume
    starts by observing again.
    """
    from upgrader.adapters.errors import classify, outside  # noqa: PLC0415 - the client only where a run acts

    resume = f"upgrader resume {checkpoint.run_id}"
    if isinstance(exc, LockLostError):
        return LockLostError(exc.message, hint=exc.hint if resume in exc.hint else f"{exc.hint} ({resume})")
    failure: UpgraderError
    if isinstance(exc, UpgraderError):
        failure = exc
    elif outside(exc) and (not isinstance(exc, OSError) or isinstance(exc, ConnectionError | TimeoutError)):
        failure = classify(exc)  # a client failure that escaped an adapter (a file's OSError is not the API's)
    else:
        raise exc  # not a lost lock or API: a bug stays a bug for the CLI to report
    if not isinstance(failure, TransientError):
        if failure is exc:
            raise exc  # a run's own error (input, refusal): it already says what to do
        return failure  # a lasting outside failure (a TLS or RBAC change): classified, with its hint
    api = isinstance(failure, ClusterUnreachableError)
    lost = "lost the Kubernetes API" if api else "the Kubernetes API kept failing"
    where = checkpoint.stopped_in or checkpoint.state
    log.error("api-lost", run_id=checkpoint.run_id, state=str(where), reason=failure.message)
    return UpgraderError(
        f"{lost} in {where}: {failure.message}; the checkpoint keeps where the run stopped",
        hint=f"once the API answers again, {resume} (or upgrader rollback {checkpoint.run_id})",
    )


def on_failure_rollback(executor: Executor, stopped: RunStoppedError) -> UpgraderError:
    """``onFailure: rollback``: undo the failed hop only; the error that ends the command, saying what happened.

    A failed hop that changed nothing (no helm revision, no restart) has nothing to undo: the run stays
    ``Failed`` with its own next command, and the message says nothing was rolled back.
    """
    checkpoint = executor.checkpoint
    log.warning("on-failure-rollback", run_id=checkpoint.run_id, reason=stopped.message)
    try:
        executor.rollback(hop=checkpoint.hop)  # the failed hop only: back to where it started
    except NothingToRollBackError:
        log.info("on-failure-nothing-to-undo", run_id=checkpoint.run_id, hop=checkpoint.hop)
        return RunStoppedError(
            f"{stopped.message}; nothing to undo (on_failure: rollback): hop {checkpoint.hop + 1} changed nothing",
            hint=checkpoint.next_command or stopped.hint,
        )
    except UpgraderError as failed:
        return UpgraderError(
            f"{stopped.message}; the rollback (on_failure: rollback) did not finish: {failed.message}",
            hint=failed.hint or f"upgrader status {checkpoint.run_id}",
        )
    return UpgraderError(
        f"{stopped.message}; rolled back (on_failure: rollback)", hint=f"upgrader status {checkpoint.run_id}"
    )


def _already_done(session: Session, checkpoint: Checkpoint, executor: Executor) -> bool:
    """A resumed run whose target another run already reached says so and restarts nothing."""
    if checkpoint.state in TERMINAL or not executor.already_at_target():
        return False
    executor.finish_elsewhere(f"the cluster is already at {session.plan.to}: control plane and proxies")
    return True


def history_entry(checkpoint: Checkpoint) -> dict[str, Any]:
    """A run as ``history -o json`` shows it: state, versions, times, and its audit record (who, plan digest,
    each hop's times and outcome, waivers and acknowledgements; ``null`` for runs from before audit records)."""
    record = checkpoint.audit
    return {
        "run_id": checkpoint.run_id,
        "state": str(checkpoint.state),
        "from": checkpoint.plan.get("from"),
        "to": checkpoint.plan.get("to"),
        "started_at": checkpoint.started_at.isoformat(),
        "updated_at": checkpoint.updated_at.isoformat(),
        "by": str(record.by) if record else None,
        "plan_digest": f"sha256:{checkpoint.plan_hash}",
        "audit": record.view() if record else None,
    }


def hops_line(checkpoint: Checkpoint) -> str:
    """Each hop's outcome and duration, for the history table: ``1 done 4m12s; 2 failed 0m40s``."""
    if checkpoint.audit is None:
        return "-"
    parts = []
    for hop in checkpoint.audit.hops:
        seconds = int(((hop.ended_at or checkpoint.updated_at) - hop.started_at).total_seconds())
        parts.append(f"{hop.hop} {hop.outcome} {seconds // 60}m{seconds % 60:02d}s")
    return "; ".join(parts) or "-"


def release_line(record: ReleaseRevisions, history: list[HelmRevision] | None) -> str:
    """A release as ``status`` shows it: the revisions the run recorded, then what helm says now when that
    differs (a failed revision the checkpoint never recorded, a rollback done by hand)."""
    line = f"revision {record.before} -> {record.after or 'unchanged'}"
    if not history:
        return line
    now = max(history, key=lambda r: r.revision)
    failed = [r.revision for r in history if r.status == "failed" and r.revision > (record.before or 0)]
    if now.revision != record.revision or now.status != "deployed":
        line += f"; helm now: revision {now.revision} {now.status} ({now.chart})"
    if failed:
        line += f"; failed revision(s): {', '.join(map(str, failed))}"
    return line


LIVE_TIMEOUT = 10.0  # seconds status waits for one helm history before it gives up on the live view


def checks_live(checkpoint: Checkpoint, latest: bool) -> bool:
    """Whether ``status`` compares ``checkpoint`` with helm's live history.

    Only where it can tell something: a run that has not finished (a failed helm revision it never
    recorded, a release changed by hand before resuming), or the latest run, finished or not (what
    happened to the installation since). An older finished run was followed by other runs: helm's
    history shows their work, not this run's, so the comparison says nothing and only costs time.
    """
    return bool(checkpoint.releases) and (latest or checkpoint.state not in TERMINAL)


def live_histories(checkpoint: Checkpoint, helm: Any) -> tuple[dict[str, list[HelmRevision]], str | None]:
    """helm history of each release the run touched (best effort: status works offline); why not, if not.

    One attempt each, bounded by ``LIVE_TIMEOUT`` and outside the retry policy; the first failure
    skips the remaining releases (an unreachable cluster fails them all alike). A release that is
    gone has no history (``[]``).
    """
    histories: dict[str, list[HelmRevision]] = {}
    for name, record in checkpoint.releases.items():
        try:
            histories[name] = helm.history_once(name, record.namespace, timeout=LIVE_TIMEOUT)
        except NotFoundError:
            histories[name] = []
        except UpgraderError as exc:
            skipped = len(checkpoint.releases) - len(histories) - 1
            return histories, exc.message + (f" ({skipped} more release(s) not checked)" if skipped else "")
    return histories, None


def live_status(
    checkpoint: Checkpoint, latest: bool, kubeconfig: Path | None, context: str | None, helm: str | None
) -> tuple[dict[str, list[HelmRevision]], str | None]:
    """``live_histories`` for ``status`` when ``checks_live`` says so, else {} and why not."""
    if not checks_live(checkpoint, latest):
        return {}, "a later run followed this finished one" if checkpoint.releases else None
    try:
        port = helm_adapter(helm_binary(helm or "helm"), kubeconfig, context)
    except UpgraderError as exc:  # no helm binary: status still works from the checkpoint
        return {}, exc.message
    return live_histories(checkpoint, port)


def live_view(history: list[HelmRevision] | None) -> dict[str, Any] | None:
    """A release as helm shows it now, for ``status -o json``: None when not checked."""
    if history is None:
        return None
    if not history:
        return {"revision": None, "status": "missing", "chart": None, "failed_revisions": []}
    now = max(history, key=lambda r: r.revision)
    return {
        "revision": now.revision,
        "status": now.status,
        "chart": now.chart,
        "failed_revisions": [r.revision for r in history if r.status == "failed"],
    }


def lock_status(checkpoint: Checkpoint, kubeconfig: Path | None, context: str | None, clock: Clock = utc_now) -> str:
    """Who holds the installation's lock and when it was last renewed (best effort: status works offline)."""
    from upgrader.adapters.kube_state import LeaseLock  # noqa: PLC0415
    from upgrader.locking import lock_summary  # noqa: PLC0415

    namespace = str(checkpoint.options.get("namespace") or "linkerd")
    try:
        kube = kube_adapter(kubeconfig, context)
        lock = LeaseLock(kube.api_client, namespace, namespace)
        return f"{namespace}/{lock.name}: {lock_summary(lock.describe(), clock())}"
    except UpgraderError as exc:
        return f"unknown ({exc.message})"
