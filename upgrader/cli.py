"""The `upgrader` command line.

Exit codes: 0 done, 1 failed, 2 bad input, 3 refused, 4 preflight errors. Errors are
printed as one message and a hint, never as a traceback (``--log-level debug`` adds it).
"""

from __future__ import annotations

import copy
import datetime as dt
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import structlog
import typer
from rich.console import Console
from rich.table import Table

from upgrader import __version__, logs
from upgrader.catalog import Catalog, default_catalog
from upgrader.discovery import Installation, observe
from upgrader.errors import EXIT_FAILED, EXIT_PREFLIGHT, EXIT_REFUSED, InputError, UpgraderError
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.rendering import render, render_checks
from upgrader.spec import Spec, deep_merge, load_spec

app = typer.Typer(
    name="upgrader",
    help="Upgrade and roll back the Linkerd service mesh on Kubernetes, safely and unattended.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = structlog.get_logger("upgrader")


class Output(StrEnum):
    table = "table"
    json = "json"


class LogFormat(StrEnum):
    console = "console"
    json = "json"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"upgrader {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    log_format: Annotated[LogFormat, typer.Option(help="console for people, json for automation.")] = (
        LogFormat.console
    ),
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise InputError(f"unknown --log-level {log_level!r}", hint="use debug, info, warning or error")
    logs.configure(log_format.value, log_level)
    _OUTPUT["bars"] = log_format is LogFormat.console and sys.stderr.isatty()


_OUTPUT = {"bars": False}  # progress bars only for people at a terminal; events otherwise


class _Bars:
    """Rich progress bars on stderr, one per wave (and one for a rollback's restarts)."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.progress import Progress  # noqa: PLC0415

        self._progress = Progress(console=console or Console(stderr=True), transient=False)
        self._tasks: dict[str, Any] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if what not in self._tasks:
            if not self._tasks:
                self._progress.start()
            self._tasks[what] = self._progress.add_task(what, total=total)
        self._progress.update(self._tasks[what], completed=done, total=total)

    def close(self) -> None:
        if self._tasks:
            self._progress.stop()


KubeconfigOpt = Annotated[
    Path | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="kubeconfig of the cluster.")
]
ContextOpt = Annotated[str | None, typer.Option("--context", help="kubeconfig context to use.")]
HelmOpt = Annotated[str, typer.Option("--helm", envvar="UPGRADER_HELM", help="helm binary (helm 4 or 3).")]


def _helm_binary(helm: str) -> str:
    found = shutil.which(helm)
    if not found:
        raise InputError(f"helm binary {helm!r} not found", hint="install helm >= 3.14 or pass --helm PATH")
    return found


@app.command()
def discover(
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
    output: Annotated[Output, typer.Option("-o", "--output", help="table or json.")] = Output.table,
) -> None:
    """Show the Linkerd installed in the cluster: Helm releases, control plane, proxies."""
    from upgrader.adapters.helm import HelmAdapter  # noqa: PLC0415 - keep --help fast
    from upgrader.adapters.kube import KubeAdapter  # noqa: PLC0415

    if kubeconfig is not None and not kubeconfig.is_file():
        raise InputError(f"kubeconfig {kubeconfig} does not exist", hint="pass --kubeconfig PATH of a cluster")
    helm_port = HelmAdapter(executable=_helm_binary(helm), kubeconfig=kubeconfig, context=context)
    kube = KubeAdapter(kubeconfig=kubeconfig, context=context)
    found = observe(kube, helm_port)
    log.info(
        "discovered",
        found=found.found,
        control_plane_version=found.control_plane_version,
        releases=len(found.releases),
        meshed_namespaces=len(found.proxies),
    )
    if output is Output.json:
        typer.echo(json.dumps(found.as_dict(), indent=2))
    else:
        _print_installation(found)


class PlanFormat(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"
    yaml = "yaml"


@dataclass
class _Session:
    """What plan and preflight share: the adapters, the catalog, the spec, the plan."""

    spec: Spec
    catalog: Catalog
    plan: Plan
    kube: Any = None
    helm: Any = None
    namespace: str = "linkerd"


def _namespace_labels(kube: Any, notes: list[str]) -> dict[str, dict[str, str]]:
    """Namespace labels for wave and spec selectors (selectors match nothing if they cannot be read)."""
    try:
        return {n.name: n.labels for n in kube.list_namespaces()}
    except UpgraderError as exc:
        if exc.retryable:
            raise
        notes.append(f"namespace labels unreadable ({exc.message}): wave selectors match nothing")
        return {}


def _plan_session(
    *,
    to: str | None,
    from_: str | None,
    offline: bool,
    spec_file: Path | None,
    ack: list[str] | None,
    repo: str,
    kubeconfig: Path | None,
    context: str | None,
    helm: str,
    impersonate: str | None = None,
    kubernetes: str | None = None,
) -> _Session:
    spec = load_spec(spec_file) if spec_file else Spec()
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
        return _Session(spec, catalog, result)
    from upgrader.adapters.helm import HelmAdapter  # noqa: PLC0415 - keep --help fast
    from upgrader.adapters.kube import KubeAdapter  # noqa: PLC0415

    if kubeconfig is not None and not kubeconfig.is_file():
        raise InputError(f"kubeconfig {kubeconfig} does not exist", hint="pass --kubeconfig PATH of a cluster")
    helm_port = HelmAdapter(
        executable=_helm_binary(helm),
        kubeconfig=kubeconfig,
        context=context,
        impersonate=impersonate,
        timeout=spec.gates.rollout_timeout,
    )
    kube = KubeAdapter(kubeconfig=kubeconfig, context=context, impersonate=impersonate)
    notes: list[str] = []
    try:
        inst = observe(kube, helm_port)
    except UpgraderError as exc:
        if exc.retryable:
            raise
        notes.append(f"discovery failed: {exc.message}")
        inst = None
    observed = Observed(control_plane=None)
    if inst is not None:
        observed = Observed(
            control_plane=catalog.parse(inst.control_plane_version) if inst.control_plane_version else None,
            data_plane=inst.proxies,
            kubernetes=inst.kubernetes_version,
            extensions=inst.extensions,
            control_plane_namespace=inst.control_plane_namespace or "linkerd",
            namespace_labels=_namespace_labels(kube, notes),
        )
        log.info(
            "observed",
            control_plane=str(observed.control_plane),
            install_method=inst.install_method,
            meshed_namespaces=len(inst.proxies),
            kubernetes=inst.kubernetes_version,
        )
    charts = ("linkerd-control-plane", "linkerd-crds", "linkerd-viz")
    try:
        found = {c: helm_port.search_repo(repo, c) for c in charts}
    except UpgraderError as exc:
        notes.append(f"helm repository {repo!r} could not be searched: {exc.message}")
        found = {c: None for c in charts}
    repo_rows = None if found["linkerd-control-plane"] is None else {c: r or [] for c, r in found.items()}
    offering, offering_notes = build_offering(catalog, repo_rows)
    if repo_rows is None:
        notes.append(f"helm repository {repo!r} is not added; chart versions come from the bundled catalog")
    result = make_plan(
        observed, target, offering, catalog, spec, acks=frozenset(ack or []), offering_notes=notes + offering_notes
    )
    return _Session(spec, catalog, result, kube, helm_port, observed.control_plane_namespace)


ToOpt = Annotated[str | None, typer.Option("--to", help="Target release, e.g. stable-2.14.10.")]
SpecOpt = Annotated[Path | None, typer.Option("--spec", help="Plan spec (see plans/).")]
AckOpt = Annotated[list[str] | None, typer.Option("--ack", help="Acknowledge a blocking upgrade note.")]
RepoOpt = Annotated[str, typer.Option(help="Helm repository name to read versions and charts from.")]


@app.command()
def plan(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    to: ToOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="Installed release (with --offline).")] = None,
    offline: Annotated[bool, typer.Option(help="Plan without a cluster or repository (needs --from).")] = False,
    spec_file: SpecOpt = None,
    ack: AckOpt = None,
    output: Annotated[PlanFormat, typer.Option("-o", "--output", help="table, markdown, json or yaml.")] = (
        PlanFormat.table
    ),
    out: Annotated[Path | None, typer.Option("--out", help="Also write the plan to this file.")] = None,
    kubernetes: Annotated[
        str | None, typer.Option("--kubernetes", help="Cluster's Kubernetes version (offline plans).")
    ] = None,
    repo: RepoOpt = "linkerd",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
) -> None:
    """Plan an upgrade (or a one-major rollback) from what is installed to --to, hop by hop."""
    if kubernetes is not None and not offline:
        raise InputError("--kubernetes is for offline plans", hint="live plans read the version from the cluster")
    session = _plan_session(
        kubernetes=kubernetes,
        to=to,
        from_=from_,
        offline=offline,
        spec_file=spec_file,
        ack=ack,
        repo=repo,
        kubeconfig=kubeconfig,
        context=context,
        helm=helm,
    )
    result = session.plan
    text = render(result, output.value)
    if out is not None:
        _write(out, render(result, "json" if out.suffix == ".json" else output.value))
    typer.echo(text, nl=False)
    log.info(
        "planned",
        hops=len(result.hops),
        refused=result.refused.code if result.refused else None,
        estimated_minutes=result.estimated_minutes,
    )
    if result.refused:
        raise typer.Exit(EXIT_REFUSED)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}", hint="pass --out PATH of a writable file") from exc


class CheckFormat(StrEnum):
    table = "table"
    json = "json"


@app.command()
def preflight(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    to: ToOpt = None,
    spec_file: SpecOpt = None,
    ack: AckOpt = None,
    min_cert_days: Annotated[int, typer.Option(help="Certificates must stay valid this many days.", min=0)] = 60,
    output: Annotated[CheckFormat, typer.Option("-o", "--output", help="table or json.")] = CheckFormat.table,
    impersonate: Annotated[str | None, typer.Option("--as", help="Check as this user (impersonation).")] = None,
    repo: RepoOpt = "linkerd",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
) -> None:
    """Check that an upgrade to --to can start: cluster, Helm, control plane, certificates, values, CRDs, HA."""
    from upgrader.preflight.checks import Context, run_checks  # noqa: PLC0415
    from upgrader.preflight.observe import gather  # noqa: PLC0415

    session = _plan_session(
        to=to,
        from_=None,
        offline=False,
        spec_file=spec_file,
        ack=ack,
        repo=repo,
        kubeconfig=kubeconfig,
        context=context,
        helm=helm,
        impersonate=impersonate,
    )
    overrides = session.spec.values.overrides
    snapshot = gather(
        session.kube,
        session.helm,
        session.plan,
        namespace=session.namespace,
        repo=repo,
        values_to_send=lambda user: deep_merge(user, overrides),
    )
    results = run_checks(
        Context(
            snapshot,
            session.plan,
            session.catalog,
            session.spec,
            now=dt.datetime.now(dt.UTC),
            min_cert_days=min_cert_days,
        )
    )
    blocking = [r for r in results if r.result == "error" and not r.waived]
    for r in results:
        if r.result != "passed":
            log.warning("check", id=r.id, result=r.result, waived=r.waived, message=r.message)
    typer.echo(render_checks(results, output.value), nl=False)
    log.info(
        "preflight", checks=len(results), errors=len(blocking), warnings=sum(r.result == "warning" for r in results)
    )
    if blocking:
        raise typer.Exit(EXIT_PREFLIGHT)


StateStoreOpt = Annotated[
    str | None,
    typer.Option(
        "--state-store",
        envvar="UPGRADER_STATE_STORE",
        help="file:DIR (default file:$XDG_STATE_HOME/upgrader) or kubernetes:NAMESPACE.",
    ),
]


def _default_store() -> str:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return f"file:{base / 'upgrader' / 'runs'}"


def _store(state_store: str | None, kube: Any | None) -> Any:
    from upgrader.checkpoints import FileStore, parse_state_store  # noqa: PLC0415

    kind, arg = parse_state_store(state_store or _default_store())
    if kind == "file":
        return FileStore(Path(arg).expanduser())
    if kube is None:
        raise InputError("kubernetes: state stores need a cluster", hint="pass --kubeconfig, or use file:DIR")
    from upgrader.adapters.kube_state import SecretCheckpointStore  # noqa: PLC0415

    return SecretCheckpointStore(kube.api_client, arg)


def _store_for(state_store: str | None, kubeconfig: Path | None, context: str | None) -> Any:
    """The state store of a command that has no session: a cluster client only for kubernetes: stores."""
    from upgrader.adapters.kube import KubeAdapter  # noqa: PLC0415

    needs_cluster = (state_store or _default_store()).startswith("kubernetes:")
    return _store(state_store, KubeAdapter(kubeconfig=kubeconfig, context=context) if needs_cluster else None)


class _LockedStore:
    """Renews the installation lock every time a checkpoint is written."""

    def __init__(self, store: Any, lock: Any, me: str) -> None:
        self._store, self._lock, self._me = store, lock, me

    def fetch(self, *, run_id: str) -> Any:
        return self._store.fetch(run_id=run_id)

    def store(self, *, checkpoint: Any) -> None:
        self._lock.acquire(self._me, dt.datetime.now(dt.UTC))
        self._store.store(checkpoint=checkpoint)

    def runs(self) -> list[Any]:
        return list(self._store.runs())

    def purge(self, *, run_id: str) -> None:
        self._store.purge(run_id=run_id)


def _executor(session: _Session, checkpoint: Any, store: Any, *, repo: str, min_cert_days: int) -> Any:
    from upgrader.adapters.cluster_ports import ClusterPorts, RetryingMetrics  # noqa: PLC0415
    from upgrader.execution import Executor  # noqa: PLC0415
    from upgrader.preflight.checks import Context, run_checks  # noqa: PLC0415
    from upgrader.preflight.observe import gather  # noqa: PLC0415

    overrides = session.spec.values.overrides

    def preflight_for(plan: Plan, _index: int) -> list[Any]:
        snapshot = gather(
            session.kube,
            session.helm,
            plan,
            namespace=session.namespace,
            repo=repo,
            values_to_send=lambda user: deep_merge(user, overrides),
        )
        return run_checks(
            Context(
                snapshot, plan, session.catalog, session.spec, now=dt.datetime.now(dt.UTC), min_cert_days=min_cert_days
            )
        )

    ports = ClusterPorts(session.kube, session.helm, preflight=preflight_for)
    from upgrader.metrics import PrometheusMetrics  # noqa: PLC0415
    from upgrader.spec import parse_duration  # noqa: PLC0415

    url = session.spec.gates.prometheus_url
    return Executor(
        session.plan,
        session.spec,
        session.catalog,
        ports,
        store,
        checkpoint,
        clock=lambda: dt.datetime.now(dt.UTC),
        namespace=session.namespace,
        repo=repo,
        rollout_timeout=parse_duration(session.spec.gates.rollout_timeout),
        metrics=RetryingMetrics(PrometheusMetrics(url)) if url else None,
        on_progress=_Bars() if _OUTPUT["bars"] else None,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(run_id: str) -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}/{run_id}"


def _run_locked(
    session: _Session,
    store: Any,
    checkpoint: Any,
    action: str,
    *,
    take_over: bool,
    repo: str,
    min_cert_days: int,
    include_crds: bool = False,
    to_checkpoint: int | None = None,
) -> Any:
    from upgrader.adapters.kube_state import LeaseLock  # noqa: PLC0415
    from upgrader.execution import RunStoppedError  # noqa: PLC0415
    from upgrader.locking import holder_gone_here  # noqa: PLC0415

    lock = LeaseLock(session.kube.api_client, session.namespace, session.namespace)
    me = _holder(checkpoint.run_id)
    lock.acquire(
        me,
        dt.datetime.now(dt.UTC),
        take_over=take_over,
        holder_gone=lambda holder: holder_gone_here(holder, socket.gethostname(), _pid_alive),
    )
    log.info("lock", holder=me, lease=f"{session.namespace}/{lock.name}")
    locked = _LockedStore(store, lock, me)
    locked.store(checkpoint=checkpoint)
    executor = _executor(session, checkpoint, locked, repo=repo, min_cert_days=min_cert_days)
    try:
        result = (
            executor.rollback(include_crds=include_crds, to_checkpoint=to_checkpoint)
            if action == "rollback"
            else executor.run()
        )
    except RunStoppedError as exc:
        if session.spec.on_failure == "rollback" and action != "rollback":
            log.warning("on-failure-rollback", run_id=checkpoint.run_id, reason=exc.message)
            executor.rollback(include_crds=False)
            raise UpgraderError(
                f"{exc.message}; rolled back (on_failure: rollback)", hint=f"upgrader status {checkpoint.run_id}"
            ) from exc
        raise
    except KeyboardInterrupt:
        log.warning("interrupted", run_id=checkpoint.run_id, state=str(checkpoint.state))
        raise UpgraderError(
            f"interrupted in {checkpoint.state}; the checkpoint is saved",
            hint=f"upgrader resume {checkpoint.run_id} (or upgrader rollback {checkpoint.run_id})",
        ) from None
    finally:
        executor.ports.close()
        if isinstance(executor.on_progress, _Bars):
            executor.on_progress.close()
        lock.release(me)
    return result


@app.command()
def apply(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    to: ToOpt = None,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="A plan written by `plan -o json`.")] = None,
    spec_file: SpecOpt = None,
    ack: AckOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Change nothing; show what would change.")] = False,
    state_store: StateStoreOpt = None,
    take_over_lock: Annotated[bool, typer.Option(help="Take over a stale lock of a vanished run.")] = False,
    min_cert_days: Annotated[int, typer.Option(help="Certificates must stay valid this many days.", min=0)] = 60,
    repo: RepoOpt = "linkerd",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
) -> None:
    """Upgrade (or roll back one major): preflight, CRDs, control plane, extensions, data plane, per hop."""
    from upgrader.checkpoints import Checkpoint  # noqa: PLC0415

    if (to is None) == (plan_file is None):
        raise InputError("give either --to VERSION or --plan FILE", hint="upgrader apply --to stable-2.14.10")
    target = to
    if plan_file is not None:
        try:
            saved = json.loads(plan_file.read_text())
            target = str(saved["to"])
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(
                f"cannot read plan {plan_file}: {exc}", hint="write one with upgrader plan -o json"
            ) from exc
    session = _plan_session(
        to=target,
        from_=None,
        offline=False,
        spec_file=spec_file,
        ack=ack,
        repo=repo,
        kubeconfig=kubeconfig,
        context=context,
        helm=helm,
    )
    plan_now = session.plan
    if plan_file is not None and (
        saved.get("from") != plan_now.from_ or [h["to"] for h in saved.get("hops", [])] != [h.to for h in plan_now.hops]
    ):
        raise InputError(
            f"plan {plan_file} no longer matches the cluster (it starts at {saved.get('from')}, the "
            f"cluster runs {plan_now.from_})",
            hint="plan again and review the new plan",
        )
    typer.echo(render(plan_now, "table"), nl=False)
    if plan_now.refused:
        raise typer.Exit(EXIT_REFUSED)
    if not plan_now.hops:
        return
    if dry_run or session.spec.dry_run:
        _dry_run(session, repo=repo, min_cert_days=min_cert_days)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise InputError("refusing to apply without confirmation", hint="review the plan above, then add --yes")
        typer.confirm("Apply this plan?", abort=True)
    store = _store(state_store, session.kube)
    run_id = f"run-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    checkpoint = Checkpoint.new(run_id, plan_now.as_json(), dt.datetime.now(dt.UTC))
    stored_spec = session.spec.model_dump(mode="json", by_alias=True)
    stored_spec["values"]["overrides"] = {}
    from upgrader.metrics import public_url  # noqa: PLC0415

    url = stored_spec["gates"].get("prometheusUrl") or ""
    stored_spec["gates"]["prometheusUrl"] = public_url(url) if url else None  # credentials are not stored either
    checkpoint.spec = stored_spec
    checkpoint.spec_has_values = bool(session.spec.values.overrides) or public_url(url) != url
    log.info("run", run_id=run_id, hops=len(plan_now.hops), to=plan_now.to)
    result = _run_locked(
        session, store, checkpoint, "apply", take_over=take_over_lock, repo=repo, min_cert_days=min_cert_days
    )
    typer.echo(f"run {run_id}: {result.state}")


def _dry_run(session: _Session, *, repo: str, min_cert_days: int) -> None:
    from upgrader.preflight.checks import Context, run_checks  # noqa: PLC0415
    from upgrader.preflight.observe import gather  # noqa: PLC0415
    from upgrader.values import diff, outgoing  # noqa: PLC0415

    hop = session.plan.hops[0]
    snapshot = gather(
        session.kube,
        session.helm,
        session.plan,
        namespace=session.namespace,
        repo=repo,
        values_to_send=lambda user: deep_merge(user, session.spec.values.overrides),
    )
    results = run_checks(
        Context(
            snapshot,
            session.plan,
            session.catalog,
            session.spec,
            now=dt.datetime.now(dt.UTC),
            min_cert_days=min_cert_days,
        )
    )
    typer.echo(render_checks(results, "table"), nl=False)
    if hop.kind == "data-plane" or "linkerd-control-plane" not in hop.charts:
        return
    ns = session.namespace
    user = session.helm.get_values("linkerd-control-plane", ns)
    changes = [m.values for m in session.catalog.majors if m.major == int(hop.major.split(".")[1])]
    out = outgoing(
        session.spec.values.strategy,
        target_defaults=session.helm.show_values(f"{repo}/linkerd-control-plane", hop.charts["linkerd-control-plane"]),
        user_values=user,
        overrides=session.spec.values.overrides,
        changes=changes if hop.kind == "upgrade" else [],
    )
    rows = diff(session.helm.get_values("linkerd-control-plane", ns, all_values=True), out.effective)
    typer.echo(
        f"values diff for linkerd-control-plane {hop.charts['linkerd-control-plane']} "
        f"({len(rows)} change(s), secrets redacted):"
    )
    for row in rows:
        typer.echo(f"  {row['key']}: {json.dumps(row['old'])} -> {json.dumps(row['new'])}")
    for chart in ("linkerd-crds", "linkerd-control-plane"):
        if chart in hop.charts:
            values = out.values if chart == "linkerd-control-plane" else {}
            session.helm.upgrade(
                chart,
                f"{repo}/{chart}",
                ns,
                values,
                version=hop.charts[chart],
                reset_values=out.reset_values if values else False,
                reuse_values=out.reuse_values if values else False,
                dry_run=True,
            )
            typer.echo(f"helm upgrade {chart} --version {hop.charts[chart]} --dry-run=server: accepted")
    typer.echo("dry run: nothing was changed")


def _load(store: Any, run: str | None, *, unfinished: bool = False) -> Any:
    from upgrader.states import TERMINAL  # noqa: PLC0415

    if run:
        found = store.fetch(run_id=run)
        if found is None:
            raise InputError(f"no run {run} in the state store", hint="upgrader history lists the runs")
        return found
    runs = [c for c in store.runs() if not unfinished or c.state not in TERMINAL]
    if not runs:
        raise InputError("no run to act on in the state store", hint="upgrader history lists the runs")
    return runs[-1]


def _resume_session(
    checkpoint: Any,
    *,
    spec_file: Path | None,
    repo: str,
    kubeconfig: Path | None,
    context: str | None,
    helm: str,
    need_values: bool = True,
) -> _Session:
    from upgrader.adapters.helm import HelmAdapter  # noqa: PLC0415
    from upgrader.adapters.kube import KubeAdapter  # noqa: PLC0415
    from upgrader.checkpoints import plan_hash  # noqa: PLC0415
    from upgrader.planning import Plan as PlanModel  # noqa: PLC0415

    if plan_hash(checkpoint.plan) != checkpoint.plan_hash:
        raise InputError(
            f"run {checkpoint.run_id}: its stored plan does not match its hash",
            hint="the checkpoint was edited; start a new run",
        )
    data = copy.deepcopy(checkpoint.plan)  # the stored plan must stay as hashed: a run resumes more than once
    data["from_"] = data.pop("from", None)
    for hop in data.get("hops", []):
        hop["from_"] = hop.pop("from")
    saved = PlanModel.model_validate(data)
    if spec_file is None and checkpoint.spec_has_values and need_values:
        raise InputError(
            f"run {checkpoint.run_id} was started with value overrides or URL credentials, which checkpoints "
            "never store",
            hint=f"pass the same spec again: upgrader resume {checkpoint.run_id} --spec FILE",
        )
    spec = load_spec(spec_file) if spec_file else Spec.model_validate(checkpoint.spec or {})
    kube = KubeAdapter(kubeconfig=kubeconfig, context=context)
    helm_port = HelmAdapter(
        executable=_helm_binary(helm), kubeconfig=kubeconfig, context=context, timeout=spec.gates.rollout_timeout
    )
    namespace = next((r.namespace for r in checkpoint.releases.values()), "linkerd")
    return _Session(spec, default_catalog(), saved, kube, helm_port, namespace)


@app.command()
def resume(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    run: Annotated[str | None, typer.Argument(help="Run id (default: the latest unfinished run).")] = None,
    spec_file: SpecOpt = None,
    state_store: StateStoreOpt = None,
    take_over_lock: Annotated[bool, typer.Option(help="Take over a stale lock of a vanished run.")] = False,
    min_cert_days: Annotated[int, typer.Option(help="Certificates must stay valid this many days.", min=0)] = 60,
    repo: RepoOpt = "linkerd",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
) -> None:
    """Continue an interrupted, paused or failed run from its checkpoint, without redoing finished steps."""
    store = _store_for(state_store, kubeconfig, context)
    checkpoint = _load(store, run, unfinished=True)
    session = _resume_session(
        checkpoint, spec_file=spec_file, repo=repo, kubeconfig=kubeconfig, context=context, helm=helm
    )
    log.info("resume", run_id=checkpoint.run_id, state=str(checkpoint.state), hop=checkpoint.hop)
    result = _run_locked(
        session, store, checkpoint, "apply", take_over=take_over_lock, repo=repo, min_cert_days=min_cert_days
    )
    typer.echo(f"run {checkpoint.run_id}: {result.state}")


@app.command()
def rollback(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    run: Annotated[str | None, typer.Argument(help="Run id (default: the latest run).")] = None,
    include_crds: Annotated[bool, typer.Option(help="Also roll back linkerd-crds (if storedVersions allow).")] = False,
    to_checkpoint: Annotated[
        int | None,
        typer.Option("--to-checkpoint", help="Roll back only to this checkpoint id (see `status`), not the start."),
    ] = None,
    state_store: StateStoreOpt = None,
    take_over_lock: Annotated[bool, typer.Option(help="Take over a stale lock of a vanished run.")] = False,
    repo: RepoOpt = "linkerd",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
) -> None:
    """Return the control plane to the revisions before the run, then restart what the run restarted."""
    store = _store_for(state_store, kubeconfig, context)
    checkpoint = _load(store, run)
    if to_checkpoint is not None:
        checkpoint.find_mark(to_checkpoint)  # an unknown id is bad input: refuse before touching anything
    session = _resume_session(
        checkpoint, spec_file=None, repo=repo, kubeconfig=kubeconfig, context=context, helm=helm, need_values=False
    )
    result = _run_locked(
        session,
        store,
        checkpoint,
        "rollback",
        take_over=take_over_lock,
        repo=repo,
        min_cert_days=0,
        include_crds=include_crds,
        to_checkpoint=to_checkpoint,
    )
    typer.echo(f"run {checkpoint.run_id}: {result.state}")


@app.command()
def status(
    run: Annotated[str | None, typer.Argument(help="Run id (default: the latest run).")] = None,
    output: Annotated[Output, typer.Option("-o", "--output", help="table or json.")] = Output.table,
    state_store: StateStoreOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Where a run is: state, hop, what it changed, errors, and what to run next."""
    store = _store_for(state_store, kubeconfig, context)
    cp = _load(store, run)
    if output is Output.json:
        typer.echo(cp.model_dump_json(indent=2))
        return
    hops = cp.plan.get("hops", [])
    typer.echo(
        f"run {cp.run_id}: {cp.state}{f' (stopped in {cp.stopped_in})' if cp.stopped_in else ''}; "
        f"hop {min(cp.hop + 1, len(hops))}/{len(hops)} {cp.plan.get('from')} -> {cp.plan.get('to')}"
    )
    for name, rel in cp.releases.items():
        typer.echo(f"  {rel.namespace}/{name}: revision {rel.before} -> {rel.after or 'unchanged'}")
    typer.echo(f"  workloads restarted: {len(cp.restarted)}; values changes: {len(cp.values_diff)}")
    if cp.waves_done:
        typer.echo(f"  waves passed: {', '.join(cp.waves_done)}")
    for item in cp.reported:
        typer.echo(f"  not restarted: {item}")
    for error in cp.errors:
        typer.echo(f"  error: {error}")
    if cp.marks:
        typer.echo("  checkpoints (upgrader rollback --to-checkpoint ID):")
    for mark in cp.marks:
        revisions = ", ".join(f"{n} r{r}" for n, r in mark.revisions.items()) or "no release touched yet"
        typer.echo(
            f"    {mark.id:>3}  {mark.at:%Y-%m-%d %H:%M:%S}  hop {mark.hop + 1} {mark.state}: {revisions}; "
            f"{mark.restarted} restarted"
        )
    if cp.state in ("Failed", "Paused") or cp.state not in ("Done", "RolledBack"):
        typer.echo(f"next: upgrader resume {cp.run_id}  or  upgrader rollback {cp.run_id}")


@app.command()
def history(
    output: Annotated[Output, typer.Option("-o", "--output", help="table or json.")] = Output.table,
    state_store: StateStoreOpt = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Every run in the state store, oldest first."""
    store = _store_for(state_store, kubeconfig, context)
    runs = store.runs()
    if output is Output.json:
        typer.echo(
            json.dumps(
                [
                    {
                        "run_id": c.run_id,
                        "state": c.state,
                        "from": c.plan.get("from"),
                        "to": c.plan.get("to"),
                        "started_at": c.started_at.isoformat(),
                        "updated_at": c.updated_at.isoformat(),
                    }
                    for c in runs
                ],
                indent=2,
            )
        )
        return
    table = Table("run", "state", "from", "to", "started", "updated", title="upgrader runs", min_width=110)
    for c in runs:
        table.add_row(
            c.run_id,
            str(c.state),
            str(c.plan.get("from")),
            str(c.plan.get("to")),
            c.started_at.strftime("%Y-%m-%d %H:%M"),
            c.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)


def _print_installation(inst: Installation) -> None:
    console = Console()
    console.print(f"Kubernetes {inst.kubernetes_version}")
    if not inst.found:
        console.print("No Linkerd installation found (no Linkerd Helm release, linkerd-config or meshed pod).")
        return
    cp = inst.control_plane_version or "not found"
    console.print(
        f"Control plane: {cp} in namespace {inst.control_plane_namespace or '-'}"
        f"{' (HA)' if inst.high_availability else ''}"
    )
    releases = Table(
        "release", "namespace", "chart", "version", "app version", "revision", "status", title="Helm releases"
    )
    for r in inst.releases:
        releases.add_row(r.name, r.namespace, r.chart_name, r.chart_version, r.app_version, str(r.revision), r.status)
    console.print(releases)
    proxies = Table("namespace", "proxy version", "pods", title="Data plane")
    for ns, versions in inst.proxies.items():
        for v, n in versions.items():
            proxies.add_row(ns, v, str(n))
    console.print(proxies)


def _fail(exc: UpgraderError) -> NoReturn:
    err = Console(stderr=True)
    err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[bold]hint:[/] {exc.hint}", highlight=False, soft_wrap=True)
    raise SystemExit(exc.exit_code)


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM stops like Ctrl-C: the current step's checkpoint is written and a resume hint printed."""
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    """Console-script entry point: usage errors exit 2 (typer), our errors exit with their code."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except UpgraderError as exc:
        _fail(exc)
    except Exception as exc:
        if "--log-level" in sys.argv and "debug" in sys.argv:
            raise
        Console(stderr=True).print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\n"
            "hint: rerun with --log-level debug for the traceback and report it",
            highlight=False,
        )
        raise SystemExit(EXIT_FAILED) from None
