"""Commands that act: `apply`, `resume`, `rollback`, with the lock and the executor."""

from __future__ import annotations

import copy
import datetime as dt
import getpass
import json
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from upgrader.catalog import default_catalog
from upgrader.cli.common import (
    _OUTPUT,
    AckOpt,
    ContextOpt,
    HelmOpt,
    KubeconfigOpt,
    RepoOpt,
    SpecOpt,
    StateStoreOpt,
    ToOpt,
    _Bars,
    _helm_binary,
    _load,
    _plan_session,
    _Session,
    _store,
    _store_for,
    app,
    log,
)
from upgrader.errors import EXIT_REFUSED, InputError, UpgraderError
from upgrader.planning import Plan
from upgrader.rendering import render, render_checks
from upgrader.spec import Spec, deep_merge, load_spec


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


def _dry_run_data_plane(session: _Session, hop: Any) -> None:
    """What the first hop's waves would restart, in order, and what they would leave alone."""
    from upgrader.dataplane import inventory  # noqa: PLC0415
    from upgrader.ports import DataPlaneView  # noqa: PLC0415

    kube = session.kube
    view = DataPlaneView(
        tuple(kube.list_namespaces()),
        tuple(kube.list_workloads()),
        tuple(kube.list_pods()),
        tuple(kube.list_budgets()),
    )
    dp = session.spec.data_plane
    typer.echo(
        f"data plane, hop 1 ({dp.max_concurrent_per_namespace} per namespace, {dp.max_namespaces} namespaces at once):"
    )
    for wave in hop.waves:
        inv = inventory(
            view,
            wave.namespaces,
            exclude_namespaces=dp.exclude_namespaces,
            include_selector=dp.include_selector or None,
            exclude_selector=dp.exclude_selector or None,
        )
        names = ", ".join(f"{w.kind} {w.namespace}/{w.name}" for w in inv.targets) or "nothing"
        typer.echo(f"  wave {wave.name} would restart {len(inv.targets)}: {names}")
        for item in inv.reported:
            typer.echo(f"    not restarted: {item}")


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
    _dry_run_data_plane(session, hop)
    if hop.kind == "data-plane" or "linkerd-control-plane" not in hop.charts:
        typer.echo("dry run: nothing was changed")
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
