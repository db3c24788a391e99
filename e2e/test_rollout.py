"""Staged rollouts across clusters: three local clusters side by side (the session's and two small ones),
one kubeconfig with a context each, the fixture world at different starting versions.

- three stages bring every cluster to the target in stage order (each cluster's helm history);
- a cluster failing in stage 1 leaves stage 2 untouched and names its own resume and rollback;
- a SIGKILL of `rollout apply` (and of the cluster's run) mid-stage, then `rollout resume`, upgrade
  each cluster once: the killed run is resumed from its checkpoint in its cluster, not started again.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.fixtures.world import World
from e2e.harness.backends import ClusterHandle
from e2e.harness.fleet import merged_kubeconfig, side_clusters
from e2e.harness.leaks import OUTPUTS, run_upgrader
from e2e.harness.processes import Processes
from e2e.harness.waits import wait_for
from upgrader import incluster

TARGET = "edge-24.2.4"  # 2.15; the fixture repository offers it
# Kubernetes 1.36 is newer than any fixture major supports; no sample mesh: few pods, waves restart nothing
UPGRADE = "name: e2e\nwaivers: [kubernetes-version]\n"
TARGET_CHARTS = {
    "linkerd-crds": "linkerd-crds-1.9.4-edge",
    "linkerd-control-plane": "linkerd-control-plane-1.18.10-edge",
}


@dataclass
class Fleet:
    worlds: dict[str, World]  # context name -> the world of that cluster
    kubeconfig: Path
    env: dict[str, str]
    helm: Path


@pytest.fixture(scope="module")
def fleet(cluster: ClusterHandle, world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Context ``a`` is the session's cluster; ``b`` and ``c`` are small clusters started for this module,
    each with its own injector and the session world's chart repository."""
    root = tmp_path_factory.mktemp("fleet")
    with side_clusters(["b", "c"], root) as extra:
        processes = {name: Processes(root / f"world-{name}" / "logs") for name in extra}
        try:
            worlds = {"a": world}
            for name, side in extra.items():
                worlds[name] = World.start(
                    side.kubeconfig, root / f"world-{name}", processes[name].spawn, charts_of=world
                )
            kubeconfig = merged_kubeconfig(
                {"a": cluster.kubeconfig, **{n: c.kubeconfig for n, c in extra.items()}}, root / "kubeconfig"
            )
            yield Fleet(worlds, kubeconfig, world.helm_env(root / "helm"), world.helm)
        finally:
            for p in processes.values():
                p.stop()


@pytest.fixture
def clean_fleet(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet, with Linkerd (and the checkpoints in its namespace) removed from every cluster afterwards."""
    yield fleet
    for w in fleet.worlds.values():
        w.reset()


def _install(fleet: Fleet, versions: dict[str, str]) -> None:
    for name, version in versions.items():
        fleet.worlds[name].install(version)


def _rollout(tmp_path: Path, stages: list[tuple[str, list[str]]], *, name: str = "e2e", extra: str = "") -> Path:
    (tmp_path / "upgrade.yaml").write_text(UPGRADE)
    lines = [f"kind: RolloutSpec\nname: {name}\ntarget: {TARGET}\nspec: upgrade.yaml\nstages:"]
    for stage, contexts in stages:
        lines.append(f"  - name: {stage}\n    clusters:")
        lines += [f"      - context: {c}" for c in contexts]
    path = tmp_path / "rollout.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _args(fleet: Fleet, tmp_path: Path, command: str, spec: Path, *more: str) -> list[str]:
    return [
        "rollout",
        command,
        str(spec),
        "--kubeconfig",
        str(fleet.kubeconfig),
        *(["--helm", str(fleet.helm)] if command != "status" else []),
        *(["--rollout-state", str(tmp_path / "rollouts")] if command != "plan" else []),
        *more,
    ]


def _history(world: World, release: str) -> list[dict[str, Any]]:
    return world.helm_history(release)


def _at(row: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(row["updated"]))


def _upgraded_to_target(world: World) -> None:
    for release, chart in TARGET_CHARTS.items():
        rows = _history(world, release)
        assert rows[-1]["chart"] == chart, rows
        assert rows[-1]["status"] == "deployed", rows


def _record(tmp_path: Path, name: str = "e2e") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "rollouts" / f"{name}.json").read_text())
    return data


def test_three_stages_bring_every_cluster_to_the_target_in_stage_order(clean_fleet: Fleet, tmp_path: Path) -> None:
    """b (2.13.7, two hops), then a (2.14.10), then c (2.14.10): each at the target, each stage's upgrades after
    the last one of the stage before; `rollout plan` shows each cluster's own hops, `status` every cluster Done."""
    fleet = clean_fleet
    _install(fleet, {"a": "stable-2.14.10", "b": "stable-2.13.7", "c": "stable-2.14.10"})
    spec = _rollout(tmp_path, [("first", ["b"]), ("second", ["a"]), ("third", ["c"])])

    planned = run_upgrader(*_args(fleet, tmp_path, "plan", spec, "-o", "json"), env=fleet.env, timeout=300)
    assert planned.returncode == 0, planned.stderr[-3000:]
    doc = json.loads(planned.stdout)
    hops = {c["context"]: c["hops"] for s in doc["stages"] for c in s["clusters"]}
    assert hops == {"b": ["stable-2.14.10", TARGET], "a": [TARGET], "c": [TARGET]}
    assert [s["name"] for s in doc["stages"]] == ["first", "second", "third"]

    out = run_upgrader(*_args(fleet, tmp_path, "apply", spec, "--yes"), env=fleet.env, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "rollout e2e: Done" in out.stdout

    for world in fleet.worlds.values():
        _upgraded_to_target(world)
    assert len(_history(fleet.worlds["b"], "linkerd-control-plane")) == 3, "b: one upgrade revision per hop"
    order = ["b", "a", "c"]
    for before, after in itertools.pairwise(order):
        last = max(_at(r) for rel in TARGET_CHARTS for r in _history(fleet.worlds[before], rel)[1:])
        first = min(_at(r) for rel in TARGET_CHARTS for r in _history(fleet.worlds[after], rel)[1:])
        assert last < first, f"{after} was upgraded before {before} finished"

    status = run_upgrader(*_args(fleet, tmp_path, "status", spec, "-o", "json"), env=fleet.env, timeout=120)
    assert status.returncode == 0, status.stderr[-2000:]
    seen = json.loads(status.stdout)
    assert seen["state"] == "Done"
    assert {c["context"]: (c["state"], c["run"]["state"]) for c in seen["clusters"]} == {
        n: ("Done", "Done") for n in ("a", "b", "c")
    }


def test_a_cluster_failing_in_stage_one_leaves_stage_two_untouched(clean_fleet: Fleet, tmp_path: Path) -> None:
    """a's control plane cannot be scheduled (its own spec): a ends Failed, the rollout exits 1 naming a's own
    resume and rollback commands (with --context a), and b in stage 2 keeps its one revision."""
    fleet = clean_fleet
    _install(fleet, {"a": "stable-2.14.10", "b": "stable-2.14.10"})
    (tmp_path / "bad.yaml").write_text(
        UPGRADE + "gates:\n  rolloutTimeout: 15s\nvalues:\n  overrides:\n"
        "    nodeSelector:\n      upgrader-e2e/none: 'true'\n"
    )
    spec = _rollout(tmp_path, [("first", ["a"]), ("second", ["b"])])
    spec.write_text(spec.read_text().replace("      - context: a\n", "      - context: a\n        spec: bad.yaml\n"))

    out = run_upgrader(*_args(fleet, tmp_path, "apply", spec, "--yes"), env=fleet.env, timeout=600)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-3000:]
    record = _record(tmp_path)
    assert record["state"] == "Failed"
    assert "later stages not started: second" in record["reason"]
    a, b = record["clusters"]["a"], record["clusters"]["b"]
    assert a["state"] == "Failed"
    assert b["state"] == "Pending"
    assert b["launches"] == 0
    run_id = a["run_id"]
    assert run_id
    assert any(
        c.startswith(f"upgrader resume {run_id} --context a --state-store kubernetes:linkerd")
        for c in a["next_commands"]
    )
    assert any(c.startswith(f"upgrader rollback {run_id} --context a") for c in a["next_commands"])
    assert f"upgrader rollback {run_id} --context a" in out.stdout
    for release in TARGET_CHARTS:
        assert len(_history(fleet.worlds["b"], release)) == 1, f"b's {release} was touched"

    status = run_upgrader(*_args(fleet, tmp_path, "status", spec), env=fleet.env, timeout=120)
    assert status.returncode == 0, status.stderr[-2000:]
    assert f"run {run_id}: Failed" in status.stdout
    again = run_upgrader(*_args(fleet, tmp_path, "apply", spec, "--yes"), env=fleet.env, timeout=300)
    assert again.returncode == 3, again.stderr[-2000:]
    assert "rollout resume" in again.stderr


def _helm_holding_the_control_plane(fleet: Fleet, folder: Path) -> tuple[Path, Path]:
    """A helm that is the real one, except that ``helm upgrade linkerd-control-plane`` (not a dry run) marks
    ``reached`` and then waits to be killed: a run using it stops deterministically mid-hop, its CRDs
    upgraded and its control-plane step entered but not started."""
    folder.mkdir()
    reached, program = folder / "reached", folder / "helm"
    program.write_text(
        "#!/bin/sh\n"
        "up= cp= dry=\n"
        'for a in "$@"; do case "$a" in upgrade) up=1;; linkerd-control-plane) cp=1;; --dry-run*) dry=1;; esac; done\n'
        f'if [ -n "$up" ] && [ -n "$cp" ] && [ -z "$dry" ]; then : > {shlex.quote(str(reached))}; exec sleep 900; fi\n'
        f'exec {shlex.quote(str(fleet.helm))} "$@"\n'
    )
    program.chmod(0o755)
    return program, reached


def test_sigkill_mid_stage_then_resume_upgrades_each_cluster_once(clean_fleet: Fleet, tmp_path: Path) -> None:
    """The rollout and a's run are SIGKILLed mid-hop (a's CRDs upgraded, its control-plane upgrade about to
    start, held there by a helm that waits); `rollout resume` with the real helm resumes a's run from its own
    checkpoint (taking over its dead lock), then runs b: each release has exactly one upgrade revision."""
    fleet = clean_fleet
    _install(fleet, {"a": "stable-2.14.10", "b": "stable-2.14.10"})
    spec = _rollout(tmp_path, [("first", ["a"]), ("second", ["b"])])
    holding, reached = _helm_holding_the_control_plane(fleet, tmp_path / "holding")
    args = _args(fleet, tmp_path, "apply", spec, "--yes")
    args[args.index(str(fleet.helm))] = str(holding)
    rollout = subprocess.Popen(
        [sys.executable, "-m", "upgrader", *args], env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for("a's run mid-hop (its control-plane upgrade held)", reached.exists, timeout=300, interval=0.5)
        assert len(_history(fleet.worlds["a"], "linkerd-crds")) == 2, "a's CRDs were upgraded before"
        assert len(_history(fleet.worlds["a"], "linkerd-control-plane")) == 1, "a's control plane not yet"
        child = _record(tmp_path)["clusters"]["a"]["pid"]
        rollout.send_signal(signal.SIGKILL)
        os.killpg(child, signal.SIGKILL)  # a's run and the helm it waits on (the rollout starts it in its own group)
    finally:
        rollout.kill()
        out, err = rollout.communicate(timeout=30)
        OUTPUTS.append(("rollout apply", (out + err).decode(errors="replace")))
    wait_for("a's run gone", lambda: not _alive(child), timeout=30)
    killed = _record(tmp_path)
    assert killed["clusters"]["a"]["state"] == "Running"
    assert killed["clusters"]["b"]["state"] == "Pending"

    resumed = run_upgrader(*_args(fleet, tmp_path, "resume", spec), env=fleet.env, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    record = _record(tmp_path)
    assert record["state"] == "Done"
    a = record["clusters"]["a"]
    assert a["launches"] == 2
    log = next((tmp_path / "rollouts" / "e2e").glob("a-*.log")).read_text()
    assert f"resume {a['run_id']} --take-over-lock" in log, "a's run was resumed, not started again"
    assert log.count(" apply --to ") == 1
    for world in (fleet.worlds["a"], fleet.worlds["b"]):
        _upgraded_to_target(world)
        for release in TARGET_CHARTS:
            rows = _history(world, release)
            assert len(rows) == 2, f"{release}: one upgrade revision, found {[r['chart'] for r in rows]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not reaped yet) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# ---- --in-cluster: each cluster's run as a Job in it ----------------------------------------------------------

IMAGE = "registry.example/upgrader@sha256:" + "0" * 64  # never pulled: KWOK runs no container
JOB_NS, SA = "upgrader-rollout", "upgrader"


def _chart_rbac(world: World) -> list[dict[str, Any]]:
    """deploy/chart's ServiceAccount and RBAC (``helm template``), installed RBAC-only (job.enabled: false): the
    rollout creates each cluster's Job itself."""
    values = {
        "job": {"enabled": False},
        "controlPlaneNamespace": "linkerd",
        "releaseNamespaces": ["linkerd"],
    }
    chart = Path(__file__).resolve().parents[1] / "deploy" / "chart"
    out = subprocess.run(
        [str(world.helm), "template", SA, str(chart), "--namespace", JOB_NS, "-f", "-"],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert not [d["kind"] for d in docs if d["kind"] in ("Job", "CronJob", "ConfigMap")]
    return docs


def _run_pod(
    world: World, job: dict[str, Any], secret: dict[str, str], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """What the kubelet would run for the Job's pod, here: the spec Secret's keys as files at the mount, the
    emptyDir as a folder, the init container's helm repo add, then the container's upgrader command line under
    the Job's ServiceAccount (impersonated: the pod's token would say the same)."""
    pod = job["spec"]["template"]["spec"]
    # the pod's emptyDir is its HOME: helm's OpenAPI cache lands there (the leak guard reads it; e2e/harness/leaks.py)
    mount, work = tmp_path / "pod-spec", tmp_path / "pod-work"
    mount.mkdir()
    work.mkdir()
    for key, value in secret.items():
        (mount / key).write_text(value)
    local = {incluster.SPEC_DIR: str(mount), incluster.WORK_DIR: str(work)}

    def here(text: str) -> str:
        for inside, outside in local.items():
            text = text.replace(inside, outside)
        return text

    [init] = pod["initContainers"]
    [main] = pod["containers"]
    env = dict(os.environ, **{e["name"]: here(e["value"]) for e in main["env"]})
    assert init["command"] == ["helm"]
    subprocess.run([str(world.helm), *init["args"]], env=env, check=True, capture_output=True, timeout=60)
    assert "command" not in main, "the image's entrypoint (upgrader) runs the args"
    args = [here(a) for a in main["args"]]
    subject = f"system:serviceaccount:{JOB_NS}:{pod['serviceAccountName']}"
    cli = [*args, "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm), "--as", subject]
    return run_upgrader(*cli, env=env, timeout=600)


def test_in_cluster_rollout_runs_each_cluster_as_a_job_and_follows_its_state_store(
    clean_fleet: Fleet, tmp_path: Path
) -> None:
    """`rollout apply --in-cluster --image REF` creates b's Job (the chart's SA, the run named up front, its spec in
    a Secret) and follows b's run through b's state store; the Job's command line, run as its ServiceAccount, ends
    Done, and so does the rollout."""
    fleet = clean_fleet
    b = fleet.worlds["b"]
    _install(fleet, {"b": "stable-2.14.10"})
    b.ensure_namespace(JOB_NS, {"upgrader-e2e/sample": "true"})
    b.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(_chart_rbac(b)))
    # KWOK would mark the Job's pod Succeeded without running it: no pod may start, so the Job stays unfinished
    # until the test has run its command line (a Job that completes with no run of it is Failed, not Done)
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-pods", "namespace": JOB_NS}}
    b.kubectl("apply", "-f", "-", stdin=yaml.safe_dump({**quota, "spec": {"hard": {"pods": "0"}}}))
    spec = _rollout(tmp_path, [("only", ["b"])], name="e2e-jobs")
    more = ["--yes", "--in-cluster", "--image", IMAGE, "--job-namespace", JOB_NS, "--service-account", SA]
    command = [
        sys.executable,
        "-m",
        "upgrader",
        *_args(fleet, tmp_path, "apply", spec, *more, "--helm-repo-url", b.repo_url),
    ]
    rollout = subprocess.Popen(command, env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        batch = client.BatchV1Api(b.api)
        jobs = wait_for(
            "the rollout's Job in b",
            lambda: batch.list_namespaced_job(JOB_NS, label_selector="upgrader.io/rollout=e2e-jobs").items,
            timeout=300,
        )
        job = b.api.sanitize_for_serialization(jobs[0])
        record = _record(tmp_path, "e2e-jobs")["clusters"]["b"]
        assert job["metadata"]["name"] == record["job"] == f"{record['run_id']}-1"
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == SA
        [main] = pod["containers"]
        assert main["image"] == IMAGE
        assert main["args"][main["args"].index("--run-id") + 1] == record["run_id"]
        assert main["args"][main["args"].index("--state-store") + 1] == f"kubernetes:{JOB_NS}"
        raw = client.CoreV1Api(b.api).read_namespaced_secret(f"{record['job']}-spec", JOB_NS).data or {}
        secret = {k: base64.b64decode(v).decode() for k, v in raw.items()}
        assert "kubernetes-version" in secret[incluster.SPEC_KEY]

        ran = _run_pod(b, job, secret, tmp_path)
        assert ran.returncode == 0, (ran.stdout + ran.stderr)[-3000:]
        out, err = rollout.communicate(timeout=120)
    finally:
        rollout.kill()
    OUTPUTS.append(("rollout apply --in-cluster", out + err))
    assert rollout.returncode == 0, (out + err)[-3000:]
    record = _record(tmp_path, "e2e-jobs")
    assert record["state"] == "Done"
    assert record["clusters"]["b"]["state"] == "Done"
    run_id = record["clusters"]["b"]["run_id"]
    assert record["clusters"]["b"]["reason"] in ("run Done", f"run {run_id} is Done"), record["clusters"]["b"]
    assert record["clusters"]["b"]["launches"] == 1
    _upgraded_to_target(b)
