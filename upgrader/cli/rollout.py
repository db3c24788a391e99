"""`upgrader rollout plan|apply|status|resume`: staged rollouts across clusters (``upgrader.fleet`` acts)."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from upgrader import fleet
from upgrader.cli.common import HelmOpt, KubeconfigOpt, Output, RepoOpt, app, echo, write_file
from upgrader.errors import EXIT_REFUSED, InputError
from upgrader.permissions import operator_text
from upgrader.rollout import ClusterState, RolloutRecord

rollout_app = typer.Typer(
    name="rollout",
    help="Staged rollouts across clusters: a RolloutSpec's stages, one cluster's run per kubeconfig context.",
    no_args_is_help=True,
)
app.add_typer(rollout_app)

SpecArg = Annotated[Path, typer.Argument(help="The rollout spec (kind: RolloutSpec, see plans/rollouts/).")]
StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--rollout-state",
        envvar="UPGRADER_ROLLOUT_STATE",
        help="Folder of the rollout's own record and run logs (default $XDG_STATE_HOME/upgrader/rollouts).",
    ),
]
StateNamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "--state-namespace",
        help="Namespace of each cluster's run checkpoints (--state-store kubernetes:NS; default linkerd, or the "
        "Jobs' namespace with --in-cluster).",
    ),
]
InClusterOpt = Annotated[
    bool,
    typer.Option(
        "--in-cluster",
        help="Run each cluster's run as a Job in that cluster (needs --image). You need, in the Jobs' namespace: "
        f"{operator_text()}; and read the runs' checkpoints (get, list secrets in the state namespace).",
    ),
]
ImageOpt = Annotated[str | None, typer.Option("--image", help="The Jobs' image reference (pin it by digest).")]
JobNamespaceOpt = Annotated[str, typer.Option("--job-namespace", help="Namespace of the Jobs and their spec.")]
ServiceAccountOpt = Annotated[
    str, typer.Option("--service-account", help="The Jobs' ServiceAccount (its RBAC from deploy/chart).")
]
HelmRepoUrlOpt = Annotated[str, typer.Option("--helm-repo-url", help="Chart repository the Jobs add as `linkerd`.")]


class RolloutFormat(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"


def _say(line: str) -> None:
    echo(line, err=True)


def _fleet(
    kubeconfig: Path | None,
    helm: str,
    repo: str,
    state_namespace: str | None,
    state: Path | None,
    *,
    in_cluster: fleet.InCluster | None = None,
) -> fleet.Fleet:
    return fleet.Fleet(
        kubeconfig=kubeconfig,
        helm=helm,
        repo=repo,
        state_namespace=state_namespace or (in_cluster.namespace if in_cluster else "linkerd"),
        files=fleet.RecordFiles(state or fleet.default_rollout_state()),
        say=_say,
        in_cluster=in_cluster,
    )


def _in_cluster(
    given: bool, image: str | None, namespace: str, service_account: str, helm_repo_url: str
) -> fleet.InCluster | None:
    if not given:
        if image is not None:
            raise InputError("--image is for --in-cluster rollouts", hint="add --in-cluster, or drop --image")
        return None
    if not image:
        raise InputError("--in-cluster needs the Jobs' image", hint="pass --image REGISTRY/upgrader@sha256:...")
    return fleet.InCluster(image, namespace, service_account, helm_repo_url)


@rollout_app.command("plan")
def plan(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    spec: SpecArg,
    kubeconfig: KubeconfigOpt = None,
    helm: HelmOpt = "helm",
    repo: RepoOpt = "linkerd",
    output: Annotated[RolloutFormat, typer.Option("-o", "--output", help="table, markdown or json.")] = (
        RolloutFormat.table
    ),
    out: Annotated[Path | None, typer.Option("--out", help="Write the plan to this file.")] = None,
) -> None:
    """Each cluster's own plan, in stage order; exit 3 when a cluster that may not be skipped is refused."""
    rollout, stages = fleet.load(spec, kubeconfig)
    result = fleet.plan_rollout(rollout, stages, kubeconfig=kubeconfig, helm=helm, repo=repo)
    text = fleet.render_plan(result, output.value)
    if out is not None:
        write_file(out, text)
    else:
        echo(text, nl=False)
    if result.refused:
        raise typer.Exit(EXIT_REFUSED)


@rollout_app.command("apply")
def apply(  # noqa: PLR0917 - typer maps each CLI option to a parameter
    spec: SpecArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    kubeconfig: KubeconfigOpt = None,
    helm: HelmOpt = "helm",
    repo: RepoOpt = "linkerd",
    state_namespace: StateNamespaceOpt = None,
    rollout_state: StateOpt = None,
    in_cluster: InClusterOpt = False,
    image: ImageOpt = None,
    job_namespace: JobNamespaceOpt = "upgrader",
    service_account: ServiceAccountOpt = "upgrader",
    helm_repo_url: HelmRepoUrlOpt = "https://helm.linkerd.io/stable",
) -> None:
    """Plan every cluster, then run the stages in order: each cluster's run with its own checkpoints and lock
    in that cluster; a failed cluster stops every later stage (exit 1), a paused one pauses the rollout (5)."""
    place = _in_cluster(in_cluster, image, job_namespace, service_account, helm_repo_url)
    rollout, stages = fleet.load(spec, kubeconfig)
    runner = _fleet(kubeconfig, helm, repo, state_namespace, rollout_state, in_cluster=place)
    fleet.refuse_if_under_way(runner, rollout)  # before planning: a half-upgraded cluster may plan differently
    result = fleet.plan_rollout(rollout, stages, kubeconfig=kubeconfig, helm=helm, repo=repo)
    echo(fleet.render_plan(result, "table").split("\ncluster ")[0].rstrip("\n"))
    if result.refused:
        raise fleet.RolloutRefusedError(
            f"rollout {rollout.spec.name} refused: {result.refused}",
            hint="fix that cluster, or let the rollout skip it (allowRefused: true on its entry)",
        )
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(
                "refusing to start the rollout without confirmation", hint="review the plan, then add --yes"
            )
        typer.confirm("Start this rollout?", abort=True)
    record = fleet.start(runner, rollout, stages, result)
    _print_end(record)


@rollout_app.command("resume")
def resume(
    spec: SpecArg,
    kubeconfig: KubeconfigOpt = None,
    helm: Annotated[
        str | None, typer.Option("--helm", envvar="UPGRADER_HELM", help="helm binary (default: the rollout's own).")
    ] = None,
    repo: Annotated[str | None, typer.Option(help="Helm repository name (default: the rollout's own).")] = None,
    rollout_state: StateOpt = None,
) -> None:
    """Continue a stopped rollout: Done clusters are left alone, a cluster's stopped run is resumed from its
    own checkpoint (a run still going is followed), then the later stages."""
    rollout = fleet.load_spec_file(spec)
    runner = _fleet(kubeconfig, "helm", "linkerd", None, rollout_state)
    _, stages = fleet.reopened(runner, rollout, kubeconfig, helm=helm, repo=repo)
    _print_end(fleet.resume(runner, rollout, stages))


@rollout_app.command("status")
def status(
    spec: SpecArg,
    kubeconfig: KubeconfigOpt = None,
    rollout_state: StateOpt = None,
    output: Annotated[Output, typer.Option("-o", "--output", help="table or json.")] = Output.table,
) -> None:
    """Every cluster's state: the rollout's record, and each cluster's run read from its own checkpoint."""
    rollout = fleet.load_spec_file(spec)
    runner = _fleet(kubeconfig, "helm", "linkerd", None, rollout_state)
    record, _ = fleet.reopened(runner, rollout, kubeconfig)
    rows = [fleet.cluster_status(runner, record, c) for c in record.clusters.values()]
    if output is Output.json:
        doc = {
            "rollout": record.rollout,
            "to": record.target,
            "state": str(record.state),
            "reason": record.reason,
            "stages": [{"name": s.name, "state": str(s.state), "reason": s.reason} for s in record.stages],
            "clusters": rows,
        }
        echo(json.dumps(doc, indent=2))
        return
    echo(
        f"rollout {record.rollout} -> {record.target}: {record.state}"
        + (f" ({record.reason})" if record.reason else "")
    )
    for stage in record.stages:
        echo(f"stage {stage.name}: {stage.state}" + (f" ({stage.reason})" if stage.reason else ""))
        for row in rows:
            if row["stage"] != stage.name:
                continue
            run = row["run"] or {}
            seen = (
                f"; run {row['run_id']}: {run['state']}, hop {run['hop']} ({run['from']} -> {run['to']})"
                if "state" in run
                else f"; run unreadable: {run['error']}"
                if "error" in run
                else ""
            )
            echo(f"  {row['context']}: {row['state']}" + (f" ({row['reason']})" if row["reason"] else "") + seen)
            for command in row["next_commands"]:
                echo(f"    next: {command}")


def _print_end(record: RolloutRecord) -> None:
    echo(f"rollout {record.rollout}: {record.state}" + (f" ({record.reason})" if record.reason else ""))
    for cluster in record.clusters.values():
        echo(
            f"  {cluster.stage}/{cluster.context}: {cluster.state}" + (f" ({cluster.reason})" if cluster.reason else "")
        )
        if cluster.state in (ClusterState.FAILED, ClusterState.PAUSED):
            for command in cluster.next_commands:
                echo(f"    next: {command}")
    code = fleet.exit_code(record)
    if code:
        raise typer.Exit(code)
