"""Commands that act: `apply`, `resume`, `rollback`. They parse options and print; `upgrader.runs` acts."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from upgrader import runs
from upgrader.checkpoints import Checkpoint, CheckpointStore, check_run_id
from upgrader.cli.common import (
    OUTPUT,
    AckOpt,
    Bars,
    ContextOpt,
    HelmOpt,
    KubeconfigOpt,
    RepoOpt,
    SpecOpt,
    StateStoreOpt,
    ToOpt,
    WindowOpt,
    app,
    echo,
    log,
    windows_given,
)
from upgrader.errors import EXIT_PAUSED, EXIT_REFUSED, InputError, RunNeedsOperatorError
from upgrader.rendering import render, render_checks
from upgrader.spec import Window
from upgrader.states import ACTING, RunState

MinCertDaysOpt = Annotated[
    int | None,
    typer.Option(help="Certificates must stay valid this many days (default 60; resume: the run's own).", min=0),
]
TakeOverOpt = Annotated[bool, typer.Option(help="Take over a stale lock of a vanished run.")]
AsOpt = Annotated[
    str | None,
    typer.Option("--as", help="Act as this user (impersonation), e.g. system:serviceaccount:NAMESPACE:NAME."),
]
RunIdOpt = Annotated[
    str | None,
    typer.Option(
        "--run-id",
        help="Name the run (a Job's pods share one): a run of that id already in the state store is continued "
        "if unfinished, reported if finished; --take-over-lock then takes over only that run's lock.",
    ),
]
WaitOpt = Annotated[
    bool,
    typer.Option("--wait-for-window", help="Outside the maintenance window: sleep until it opens (else exit 3)."),
]


def _say(line: str) -> None:
    echo(line, err=True)


def _print_result(result: Checkpoint) -> None:
    """The run's end; a run paused resumably (a maintenance window, Prometheus not answering a wave's gate)
    says why and what next, and exits 5."""
    echo(f"run {result.run_id}: {result.state}")
    for item in result.pinned:
        echo(f"  pinned: {item}")
    if result.state == "Paused" and result.next_command and result.next_command.startswith("upgrader resume "):
        if result.events:
            echo(f"  paused: {result.events[-1].reason}")
        echo(f"  next: {result.next_command}")
        raise typer.Exit(EXIT_PAUSED)


def _again(command: str, *given: tuple[str, object]) -> str:
    """The user's command again, from the options given (a hint repeats it with --wait-for-window)."""
    words = command.split()
    for option, value in given:
        if value is None or value is False or value == []:
            continue
        for item in value if isinstance(value, list) else [value]:
            words += [option] if item is True else [option, str(item)]
    return shlex.join(words)


def _hooks() -> runs.RunHooks:
    if not OUTPUT["bars"]:
        return runs.RunHooks()
    bars = Bars()
    return runs.RunHooks(on_progress=bars, close=bars.close)


def _print_dry_run(report: runs.DryRun, session: runs.Session) -> None:
    echo(render_checks(report.checks, "table"), nl=False)
    dp = session.spec.data_plane
    echo(
        f"data plane, hop 1 ({dp.max_concurrent_per_namespace} per namespace, {dp.max_namespaces} namespaces at once):"
    )
    for name, inv in report.waves:
        names = ", ".join(f"{w.kind} {w.namespace}/{w.name}" for w in inv.targets) or "nothing"
        echo(f"  wave {name} would restart {len(inv.targets)}: {names}")
        for item in inv.reported:
            echo(f"    not restarted: {item}")
    if report.values_source:
        echo(f"values carried: {report.values_source}")
    if report.chart:
        echo(
            f"values diff for {report.chart} {report.chart_version} "
            f"({len(report.values_diff)} change(s), secrets redacted):"
        )
        if report.ha_values:
            echo(f"  {report.ha_values}")
        for row in report.values_diff:
            echo(f"  {row['key']}: {json.dumps(row['old'])} -> {json.dumps(row['new'])}")
    for chart, version in report.server_accepted:
        echo(f"helm upgrade {chart} --version {version} --dry-run=server: accepted")
    echo("dry run: nothing was changed")


@app.command()
def apply(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    to: ToOpt = None,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="A plan written by `plan -o json`.")] = None,
    spec_file: SpecOpt = None,
    ack: AckOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Change nothing; show what would change.")] = False,
    state_store: StateStoreOpt = None,
    take_over_lock: TakeOverOpt = False,
    min_cert_days: MinCertDaysOpt = None,
    repo: RepoOpt = "linkerd",
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
    window: WindowOpt = None,
    wait_for_window: WaitOpt = False,
    run_id: RunIdOpt = None,
    impersonate: AsOpt = None,
) -> None:
    """Upgrade (or roll back one major): preflight, CRDs, control plane, extensions, data plane, per hop."""
    if (to is None) == (plan_file is None):
        raise InputError("give either --to VERSION or --plan FILE", hint="upgrader apply --to stable-2.14.10")
    if run_id is not None:
        check_run_id(run_id)
        store = runs.store_for(state_store, kubeconfig, context, impersonate)
        existing = store.fetch(run_id=run_id)
        if existing is not None:
            _continue_named(
                existing,
                store,
                to=to,
                spec_file=spec_file,
                kubeconfig=kubeconfig,
                context=context,
                helm=helm,
                impersonate=impersonate,
                options=runs.RunOptions.stored(existing, min_cert_days=min_cert_days, repo=repo),
                take_over=take_over_lock,
                state_store=state_store,
                windows=windows_given(window),
                wait_for_window=wait_for_window,
            )
            return
    saved = runs.load_plan_file(plan_file) if plan_file is not None else None
    session = runs.plan_session(
        to=saved["to"] if saved is not None else to,
        from_=None,
        offline=False,
        spec_file=spec_file,
        ack=ack,
        repo=repo,
        kubeconfig=kubeconfig,
        context=context,
        helm=helm,
        impersonate=impersonate,
        windows_given=windows_given(window),
        state_store=state_store,
        permissions_first=not dry_run,  # a run without them stops at once (a dry run reports every check)
    )
    if saved is not None and plan_file is not None:
        runs.check_plan_file(saved, session.plan, plan_file)
    echo(render(session.plan, "table"), nl=False)
    if session.plan.refused:
        raise typer.Exit(EXIT_REFUSED)
    if not session.plan.hops:
        return
    options = runs.RunOptions.given(min_cert_days=min_cert_days, repo=repo)
    if dry_run or session.spec.dry_run:
        _print_dry_run(runs.dry_run(session, options), session)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise InputError("refusing to apply without confirmation", hint="review the plan above, then add --yes")
        typer.confirm("Apply this plan?", abort=True)
    store = runs.open_store(state_store, session.kube)
    checkpoint = runs.new_checkpoint(session, options, run_id=run_id)
    log.info("run", run_id=checkpoint.run_id, hops=len(session.plan.hops), to=session.plan.to)
    result = runs.execute(
        session,
        store,
        checkpoint,
        "apply",
        options=options,
        take_over=take_over_lock,
        own_lock_only=run_id is not None,
        hooks=_hooks(),
        command=_again(
            "upgrader apply",
            ("--to", to),
            ("--plan", plan_file),
            ("--spec", spec_file),
            ("--ack", ack or []),
            ("--yes", True),
            ("--window", window or []),
            ("--state-store", state_store),
            ("--min-cert-days", min_cert_days),
            ("--repo", repo if repo != "linkerd" else None),
            ("--kubeconfig", kubeconfig),
            ("--context", context),
            ("--helm", helm if helm != "helm" else None),
            ("--run-id", run_id),
            ("--as", impersonate),
        ),
        wait_for=wait_for_window,
        say=_say,
    )
    _print_result(result)


def _continue_named(
    existing: Checkpoint,
    store: CheckpointStore,
    *,
    to: str | None,
    spec_file: Path | None,
    kubeconfig: Path | None,
    context: str | None,
    helm: str,
    impersonate: str | None,
    options: runs.RunOptions,
    take_over: bool,
    state_store: str | None,
    windows: list[Window],
    wait_for_window: bool,
) -> None:
    """``apply --run-id`` of a run already in the store: a Done one is reported (exit 0); an interrupted one (in
    an acting state) or one a maintenance window paused is continued from its checkpoint like ``resume`` (a Job's
    pod started again). One that stopped for an operator (Failed, Paused on a gate, rolled back) is reported and
    left alone, exit 6, which the Job's podFailurePolicy treats as final: Kubernetes never retries it unattended."""
    planned_to = str(existing.plan.get("to") or "")
    if to is not None and planned_to and to != planned_to:
        raise InputError(
            f"run {existing.run_id} upgrades to {planned_to}, not {to}",
            hint="give the new target a new --run-id (a CronJob's run id carries its target)",
        )
    if existing.state == RunState.DONE:
        echo(f"run {existing.run_id}: {existing.state} (already finished; nothing to do)")
        return
    stopped = _stopped_for_an_operator(existing)
    if stopped is not None:
        raise RunNeedsOperatorError(
            f"run {existing.run_id} {stopped}; apply --run-id continues only an interrupted or window-paused run",
            hint=f"look at it: upgrader status {existing.run_id}; then upgrader resume {existing.run_id} "
            f"or upgrader rollback {existing.run_id} (or a new --run-id)",
        )
    session = runs.resume_session(
        existing, spec_file=spec_file, kubeconfig=kubeconfig, context=context, helm=helm, impersonate=impersonate
    )
    session.spec = session.spec.with_windows(windows)
    log.info("resume", run_id=existing.run_id, state=str(existing.state), hop=existing.hop, **options.as_dict())
    result = runs.execute(
        session,
        store,
        existing,
        "resume",
        options=options,
        take_over=take_over,
        own_lock_only=True,
        hooks=_hooks(),
        command=_again(
            f"upgrader resume {existing.run_id}",
            ("--spec", spec_file),
            ("--state-store", state_store),
            ("--kubeconfig", kubeconfig),
            ("--context", context),
            ("--as", impersonate),
        ),
        wait_for=wait_for_window,
        say=_say,
    )
    _print_result(result)


def _stopped_for_an_operator(checkpoint: Checkpoint) -> str | None:
    """Why a named run may not be continued unattended (None: it was interrupted while acting, or a maintenance
    window paused it and names its next opening)."""
    last = checkpoint.events[-1].reason if checkpoint.events else ""
    why = f": {last}" if last else ""
    if checkpoint.state in ACTING or checkpoint.state == RunState.PLANNED:
        return None
    if checkpoint.state == RunState.PAUSED and checkpoint.resume_after is not None:
        return None
    if checkpoint.state == RunState.PAUSED:
        return f"is Paused (not by a maintenance window){why}"
    return f"ended {checkpoint.state}{why}"


@app.command()
def resume(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    run: Annotated[str | None, typer.Argument(help="Run id (default: the latest unfinished run).")] = None,
    spec_file: SpecOpt = None,
    state_store: StateStoreOpt = None,
    take_over_lock: TakeOverOpt = False,
    min_cert_days: MinCertDaysOpt = None,
    repo: Annotated[str | None, typer.Option(help="Helm repository name (default: the run's own).")] = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
    window: WindowOpt = None,
    wait_for_window: WaitOpt = False,
    impersonate: AsOpt = None,
    own_lock_only: Annotated[
        bool,
        typer.Option(
            "--own-lock-only",
            help="With --take-over-lock: take over only a stale lock of this same run, never another run's "
            "(what an unattended caller such as `rollout resume` passes).",
        ),
    ] = False,
) -> None:
    """Continue an interrupted, paused or failed run from its checkpoint, without redoing finished steps."""
    given = windows_given(window)  # bad input before anything is read
    store = runs.store_for(state_store, kubeconfig, context, impersonate)
    checkpoint: Checkpoint = runs.load_run(store, run, unfinished=True)
    session = runs.resume_session(
        checkpoint, spec_file=spec_file, kubeconfig=kubeconfig, context=context, helm=helm, impersonate=impersonate
    )
    session.spec = session.spec.with_windows(given)
    options = runs.RunOptions.stored(checkpoint, min_cert_days=min_cert_days, repo=repo)
    log.info("resume", run_id=checkpoint.run_id, state=str(checkpoint.state), hop=checkpoint.hop, **options.as_dict())
    result = runs.execute(
        session,
        store,
        checkpoint,
        "resume",
        options=options,
        take_over=take_over_lock,
        own_lock_only=own_lock_only,
        hooks=_hooks(),
        command=_again(
            f"upgrader resume {checkpoint.run_id}",
            ("--spec", spec_file if spec_file is not None else ("FILE" if checkpoint.spec_has_values else None)),
            ("--window", window or []),
            ("--state-store", state_store),
            ("--kubeconfig", kubeconfig),
            ("--context", context),
            ("--as", impersonate),
        ),
        wait_for=wait_for_window,
        say=_say,
    )
    _print_result(result)


@app.command()
def rollback(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    run: Annotated[str | None, typer.Argument(help="Run id (default: the latest run).")] = None,
    include_crds: Annotated[bool, typer.Option(help="Also roll back linkerd-crds (if storedVersions allow).")] = False,
    to_checkpoint: Annotated[
        int | None,
        typer.Option("--to-checkpoint", help="Roll back only to this checkpoint id (see `status`), not the start."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    state_store: StateStoreOpt = None,
    take_over_lock: TakeOverOpt = False,
    repo: Annotated[str | None, typer.Option(help="Helm repository name (default: the run's own).")] = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    helm: HelmOpt = "helm",
    impersonate: AsOpt = None,
) -> None:
    """Undo the run's last hop (one major back): its control plane to the revisions before that hop, then
    what it restarted. Run it again to go one more hop back; --to-checkpoint returns to any checkpoint."""
    store = runs.store_for(state_store, kubeconfig, context, impersonate)
    checkpoint: Checkpoint = runs.load_run(store, run)
    if to_checkpoint is not None:
        checkpoint.find_mark(to_checkpoint)  # an unknown id is bad input: refuse before touching anything
    session = runs.resume_session(
        checkpoint,
        spec_file=None,
        kubeconfig=kubeconfig,
        context=context,
        helm=helm,
        need_values=False,
        impersonate=impersonate,
    )
    options = runs.RunOptions.stored(checkpoint, repo=repo)
    scope = runs.rollback_scope(
        session, store, checkpoint, options=options, include_crds=include_crds, to_checkpoint=to_checkpoint
    )
    echo("\n".join(scope.describe()))
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(
                "refusing to roll back without confirmation", hint="review the rollback above, then add --yes"
            )
        typer.confirm("Roll back?", abort=True)
    result = runs.execute(
        session,
        store,
        checkpoint,
        "rollback",
        options=options,
        take_over=take_over_lock,
        include_crds=include_crds,
        to_checkpoint=to_checkpoint,
        hooks=_hooks(),
    )
    echo(f"run {checkpoint.run_id}: {result.state}")
    for item in result.pinned:
        echo(f"  pinned: {item}")
    if result.next_command:
        echo(f"next: {result.next_command}")
