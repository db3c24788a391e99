"""What every command shares: the typer app, global options, sessions, state stores, output."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from rich.console import Console

from upgrader import __version__, logs
from upgrader.catalog import Catalog, default_catalog
from upgrader.discovery import observe
from upgrader.errors import InputError, UpgraderError
from upgrader.planning import Observed, Plan, build_offering, make_plan
from upgrader.spec import Spec, load_spec

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


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}", hint="pass --out PATH of a writable file") from exc


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
