"""Running inside the cluster, on the real local cluster and real helm.

- the chart in deploy/chart renders with the real helm, its Job is ``job_manifest``'s, its RBAC rules are
  ``rbac_rules`` of every scope, and the API server accepts every object (server-side dry run);
- least privilege, proven: under the chart's ServiceAccount (impersonation, ``--as``) a full upgrade
  reaches Done; with any single one of the chart's RBAC rules removed the run fails, naming a missing
  verb and resource, and changes nothing (helm histories unchanged);
- a Job's pod killed mid-run (SIGKILL) and started again with the Job's identity and arguments
  continues its run from the in-cluster checkpoint, takes over its own lock, and finishes Done with
  each release upgraded once.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.fixtures import mesh
from e2e.fixtures.world import World
from e2e.harness import binaries
from e2e.harness.leaks import run_upgrader
from e2e.harness.waits import wait_for
from upgrader import incluster
from upgrader.adapters.kube_state import SecretCheckpointStore
from upgrader.permissions import PROBE_NAMESPACE, Scope, rbac_rules

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "chart"
START, TARGET = "stable-2.13.7", "stable-2.14.10"
RELEASE = "upgrader"  # the chart's release name: its ServiceAccount's and objects' name
SPEC = "name: in-cluster\nwaivers: [kubernetes-version, disruption.pdb-allows-restart]\n"
IMAGE = "registry.example/upgrader@sha256:" + "0" * 64  # never pulled: KWOK runs no container
SAMPLE = {"upgrader-e2e/sample": "true"}


def _render(namespace: str, **values: Any) -> list[dict[str, Any]]:
    """``helm template`` of deploy/chart with the real helm binary."""
    given = {
        "image": dict(zip(("repository", "digest"), IMAGE.split("@", 1), strict=True)),
        "target": TARGET,
        "spec": yaml.safe_load(SPEC),
        **values,
    }
    out = subprocess.run(
        [str(binaries.program("helm", "helm")), "template", RELEASE, str(CHART), "--namespace", namespace, "-f", "-"],
        input=json.dumps(given),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _subject(namespace: str) -> str:
    return f"system:serviceaccount:{namespace}:{RELEASE}"


# ---- the chart ---------------------------------------------------------------------------------------


def test_chart_renders_the_job_and_the_generated_rbac(world: World) -> None:
    """The chart's Job is job_manifest()'s; its ClusterRole and Roles hold rbac_rules(scope), bound to its SA;
    the API server accepts every object (dry run); with a schedule it is a CronJob running the same pod."""
    ns = "upgrader-chart-render"
    world.ensure_namespace(ns, SAMPLE)
    pull = {"imagePullSecrets": [{"name": "registry-a"}], "ttlSecondsAfterFinished": 0}
    docs = _render(ns, controlPlaneNamespace=ns, releaseNamespaces=[ns], **pull)
    assert sorted(d["kind"] for d in docs) == sorted(
        ["ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Job"] + ["Role", "RoleBinding"] * 4
    )
    [job] = _kind(docs, "Job")
    expected = incluster.job_manifest(
        name=f"{RELEASE}-{TARGET.replace('.', '-')}",
        namespace=ns,
        image=IMAGE,
        target=TARGET,
        service_account=RELEASE,
        spec_config_map=f"{RELEASE}-spec",
        image_pull_secrets=("registry-a",),
        ttl_seconds_after_finished=0,
    )
    assert job["spec"] == expected["spec"]
    assert job["metadata"]["name"] == expected["metadata"]["name"]
    assert job["metadata"]["annotations"] == expected["metadata"]["annotations"]
    [cm] = _kind(docs, "ConfigMap")
    assert yaml.safe_load(cm["data"]["spec.yaml"]) == yaml.safe_load(SPEC)

    [cluster_role] = _kind(docs, "ClusterRole")
    assert cluster_role["rules"] == rbac_rules(Scope.CLUSTER)
    roles = {r["metadata"]["labels"]["upgrader.io/scope"]: r for r in _kind(docs, "Role")}
    assert set(roles) == {"control-plane", "releases", "state", "probe"}
    for scope, role in roles.items():
        assert role["rules"] == rbac_rules(Scope(scope)), scope
    assert roles["probe"]["metadata"]["namespace"] == PROBE_NAMESPACE  # where every run creates its probe pod
    rbac_only = _render(ns, job={"enabled": False}, target="", image={"repository": ""})
    assert sorted(d["kind"] for d in rbac_only) == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] + ["Role", "RoleBinding"] * 4
    )
    for binding in [*_kind(docs, "RoleBinding"), *_kind(docs, "ClusterRoleBinding")]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": ns}]

    out = world.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", stdin=yaml.safe_dump_all(docs))
    assert len(out.stdout.split()) == len(docs), out.stdout

    cron_docs = _render(ns, schedule="0 1 * * 2-4", windows=["tue-thu 01:00-05:00 UTC"])
    [cron] = _kind(cron_docs, "CronJob")
    assert not _kind(cron_docs, "Job")
    expected_cron = incluster.cronjob_manifest(
        name=RELEASE,
        namespace=ns,
        image=IMAGE,
        target=TARGET,
        schedule="0 1 * * 2-4",
        windows=("tue-thu 01:00-05:00 UTC",),
        service_account=RELEASE,
        spec_config_map=f"{RELEASE}-spec",
    )
    assert cron["spec"] == expected_cron["spec"]
    world.kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(cron))


# ---- the ServiceAccount of the chart, in the test cluster --------------------------------------------------


@pytest.fixture
def service_account(clean_world: World) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The chart's ServiceAccount and RBAC (rendered by helm, created with kubectl) in a sample namespace;
    its ClusterRole and binding, and the Roles outside that namespace, removed afterwards."""
    world = clean_world
    ns = "upgrader-incluster"
    world.ensure_namespace(ns, SAMPLE)
    world.ensure_namespace("linkerd")
    docs = [
        d
        for d in _render(ns, controlPlaneNamespace="linkerd", releaseNamespaces=["linkerd"])
        if d["kind"] not in ("Job", "ConfigMap")
    ]
    world.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    try:
        yield ns, docs
    finally:
        world.kubectl(
            "delete",
            "clusterrole,clusterrolebinding,role,rolebinding",
            "-A",
            "-l",
            "app.kubernetes.io/instance=upgrader",
            "--ignore-not-found",
            check=False,
        )


def _grants(docs: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(namespace or "", group, resource, verb) every Role and ClusterRole of ``docs`` grants."""
    out = set()
    for d in docs:
        if d["kind"] not in ("Role", "ClusterRole"):
            continue
        where = d["metadata"].get("namespace", "") if d["kind"] == "Role" else ""
        for rule in d["rules"]:
            out |= {(where, g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def _lost(before: set[tuple[str, str, str, str]], after: set[tuple[str, str, str, str]]) -> set[tuple[str, ...]]:
    """What ``after`` no longer grants: a namespaced grant another Role or a cluster-wide one still gives is kept."""
    cluster = {(g, r, v) for ns, g, r, v in after if not ns}
    return {(ns, g, r, v) for ns, g, r, v in before - after if not ns or (g, r, v) not in cluster}


def _allowed(
    api: client.ApiClient, sa_ns: str, ns: str, group: str, resource: str, verb: str, *, user: str | None = None
) -> bool:
    """Whether the SA (or ``user`` in the SA's groups) may do it, as the API server's authorizer says now."""
    review = client.AuthorizationV1Api(api).create_subject_access_review(
        {
            "spec": {
                "user": user or _subject(sa_ns),
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{sa_ns}", "system:authenticated"],
                "resourceAttributes": {"namespace": ns or None, "group": group, "resource": resource, "verb": verb},
            }
        }
    )
    return bool(review.status.allowed)


def _histories(world: World) -> dict[str, list[tuple[int, str, str]]]:
    return {
        release: [(r["revision"], r["chart"], r["status"]) for r in world.helm_history(release)]
        for release in ("linkerd-crds", "linkerd-control-plane")
    }


def _generations(world: World) -> dict[str, int]:
    apps = client.AppsV1Api(world.api)
    return {
        f"{d.metadata.namespace}/{d.metadata.name}": d.metadata.generation
        for ns in ("shop", "payments")
        for d in apps.list_namespaced_deployment(ns).items
        if (d.spec.template.metadata.annotations or {}).get("linkerd.io/inject") != "disabled"
    }


def _one_rule_removed(docs: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(label, the RBAC with one rule removed, the Role or ClusterRole without it) for every rule of every role."""
    for i, d in enumerate(docs):
        if d["kind"] not in ("Role", "ClusterRole"):
            continue
        for j, rule in enumerate(d["rules"]):
            changed = copy.deepcopy(docs)
            del changed[i]["rules"][j]
            where = d["metadata"].get("namespace", "cluster")
            yield f"{d['kind']} {where} {'/'.join(rule['verbs'])} {','.join(rule['resources'])}", changed, changed[i]


def _put(api: client.ApiClient, role: dict[str, Any]) -> None:
    """Replace a Role or ClusterRole with ``role`` (one API call: kubectl would start a process each time)."""
    rbac = client.RbacAuthorizationV1Api(api)
    if role["kind"] == "ClusterRole":
        rbac.replace_cluster_role(role["metadata"]["name"], role)
    else:
        rbac.replace_namespaced_role(role["metadata"]["name"], role["metadata"]["namespace"], role)


def test_least_privilege_under_the_charts_service_account(
    clean_world: World, service_account: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Each single rule of the chart removed: `apply --as` the SA fails naming a verb and resource it lost,
    before any helm change; with every rule, the same command upgrades to Done."""
    world = clean_world
    sa_ns, docs = service_account
    world.install(START)
    env = world.helm_env(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    args = ["apply", "--to", TARGET, "--spec", str(spec), "--yes", "--state-store", f"kubernetes:{sa_ns}"]
    args += ["--as", _subject(sa_ns)]
    before = _histories(world)
    full = _grants(docs)
    tried, masked, timings = 0, [], []
    originals = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    for label, changed, role in _one_rule_removed(docs):
        # another Role in the same namespace may grant the same (control plane and releases share one), and the
        # cluster's default roles grant some to every authenticated user (selfsubjectaccessreviews: basic-user)
        lost = {g for g in _lost(full, _grants(changed)) if not _allowed(world.api, sa_ns, *g, user="nobody")}
        if not lost:
            masked.append(label)
            continue
        _put(world.api, role)
        some = sorted(lost)[0]
        wait_for(f"RBAC without {label}", lambda s=some: not _allowed(world.api, sa_ns, *s), timeout=30)
        started = time.monotonic()
        out = world.upgrader(env, *args, timeout=300)
        timings.append(time.monotonic() - started)
        text = out.stdout + out.stderr
        assert out.returncode != 0, f"{label}: the run did not fail\n{text[-3000:]}"
        assert any(
            re.search(rf"\b{v}\b[^\n]*\b{r}\b", text) or re.search(rf"\b{r}\b[^\n]*\b{v}\b", text)
            for _, _, r, v in lost
        ), f"{label}: no message names a lost verb and resource ({sorted(lost)[:4]})\n{text[-3000:]}"
        assert _histories(world) == before, f"{label}: helm changed something"
        tried += 1
        _put(world.api, originals[role["kind"], role["metadata"].get("namespace"), role["metadata"]["name"]])
    assert tried >= len(rbac_rules(Scope.CLUSTER)), (tried, masked)
    wait_for("the full RBAC again", lambda: all(_allowed(world.api, sa_ns, *g) for g in sorted(full)[:5]), timeout=30)

    out = world.upgrader(env, *args, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert ": Done" in out.stdout
    after = _histories(world)
    assert [c for _, c, _ in after["linkerd-control-plane"]][-1] == "linkerd-control-plane-1.16.11"
    assert len(after["linkerd-control-plane"]) == len(before["linkerd-control-plane"]) + 1
    print(
        f"least privilege: {tried} rules removed one at a time, {len(masked)} masked: {masked}; "
        f"failing runs took {sum(timings):.0f}s (max {max(timings):.1f}s)"
    )


# ---- a Job's pod killed and started again ------------------------------------------------------------------


def _pod_command(job: dict[str, Any], container: str, local: dict[str, Path]) -> tuple[list[str], dict[str, str]]:
    """A container of the Job's pod as a local command: its command (else the image's entrypoint, upgrader)
    and args, and its env, with the pod's folders (emptyDir, the spec's mount) mapped to ``local``."""
    pod = job["spec"]["template"]["spec"]
    [c] = [c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == container]

    def here(text: str) -> str:
        for inside, outside in local.items():
            text = text.replace(inside, str(outside))
        return text

    argv = [here(a) for a in [*c.get("command", ["upgrader"]), *c["args"]]]
    env = dict(os.environ, **{e["name"]: here(e["value"]) for e in c["env"]})
    return argv, env


def _checkpoint(world: World, ns: str, run_id: str) -> Any:
    try:
        return SecretCheckpointStore(world.api, ns).fetch(run_id=run_id)
    except Exception:  # a Secret written while we read it
        return None


def test_killed_job_pod_started_again_resumes_its_run_and_takes_over_its_own_lock(
    clean_world: World, service_account: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """The Job's command line under its SA, SIGKILLed while restarting the data plane, run again exactly:
    it continues the same run (its checkpoint in the cluster), takes over its own stale lock and ends Done,
    each release upgraded once and each workload restarted once; once more, it reports Done and does nothing."""
    world = clean_world
    sa_ns, _ = service_account
    world.install(START)
    docs = mesh.sample_mesh()
    world.apply(docs)
    world.wait_ready(mesh.namespaces(docs))
    before, generations = _histories(world), _generations(world)
    client.CoreV1Api(world.api).create_namespaced_config_map(
        sa_ns, {"metadata": {"name": "upgrader-spec"}, "data": {incluster.SPEC_KEY: SPEC}}
    )
    job = incluster.job_manifest(
        name="upgrade-linkerd",
        namespace=sa_ns,
        image=IMAGE,
        target=TARGET,
        service_account=RELEASE,
        spec_config_map="upgrader-spec",
        helm_repo_url=world.repo_url,
    )
    world.kubectl("create", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(job))
    run_id = job["metadata"]["annotations"]["upgrader.io/run-id"]
    # What the kubelet gives the pod: the emptyDir, and the ConfigMap's keys as files at the mount path.
    mount = tmp_path / "spec"
    mount.mkdir()
    cm = client.CoreV1Api(world.api).read_namespaced_config_map("upgrader-spec", sa_ns)
    for key, value in cm.data.items():
        (mount / key).write_text(value)
    local = {incluster.SPEC_DIR: mount, incluster.WORK_DIR: tmp_path / "work"}
    init, init_env = _pod_command(job, "helm-repo", local)
    subprocess.run([str(world.helm), *init[1:]], env=init_env, check=True, capture_output=True, timeout=60)
    argv, env = _pod_command(job, "upgrader", local)
    assert argv[0] == "upgrader"
    # What the pod's ServiceAccount token and PATH give it: the cluster as the SA, and helm.
    cli = [*argv[1:], "--kubeconfig", str(world.kubeconfig), "--helm", str(world.helm), "--as", _subject(sa_ns)]

    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "upgrader", *cli], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(
            "the Job's run to restart the data plane",
            lambda: (cp := _checkpoint(world, sa_ns, run_id)) is not None and str(cp.state) == "RestartingDataPlane",
            timeout=240,
            interval=0.05,
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    time.sleep(2)  # a helm child started before the kill may still be finishing
    killed = _checkpoint(world, sa_ns, run_id)
    assert killed is not None
    assert str(killed.state) == "RestartingDataPlane"
    lease = client.CoordinationV1Api(world.api).read_namespaced_lease("upgrader-lock-linkerd", "linkerd")
    assert lease.spec.holder_identity.endswith(f"/{run_id}"), "the killed run still holds its lock"

    again = run_upgrader(*cli, env=env, timeout=600)
    text = again.stdout + again.stderr
    assert again.returncode == 0, text[-4000:]
    assert f"run {run_id}: Done" in again.stdout
    assert "taken over" in text, "the stale lock of the killed attempt was taken over"
    final = _checkpoint(world, sa_ns, run_id)
    assert str(final.state) == "Done"
    runs = SecretCheckpointStore(world.api, sa_ns).survey().runs
    assert [r.run_id for r in runs] == [run_id], "one run, continued; not a second one"
    after = _histories(world)
    for release in after:
        assert len(after[release]) == len(before[release]) + 1, (release, after[release])
    assert after["linkerd-control-plane"][-1][1] == "linkerd-control-plane-1.16.11"
    now = _generations(world)
    for name, generation in generations.items():
        assert now[name] == generation + 1, f"{name} restarted {now[name] - generation} times"

    once_more = run_upgrader(*cli, env=env, timeout=120)
    assert once_more.returncode == 0, once_more.stderr[-2000:]
    assert "already finished" in once_more.stdout
    assert _histories(world) == after
