"""Running inside the cluster: the Job (or CronJob) that runs ``upgrader apply``, and its RBAC.

Pure: these functions build manifests as plain dicts and act on nothing; the chart in
``deploy/chart/`` and ``upgrader rollout apply --in-cluster`` both describe the same pod.

The pod runs the image's entrypoint (``upgrader``) with the arguments of ``job_args``::

    --log-format json apply --to TARGET [--spec /etc/upgrader/spec.yaml] --yes
        --state-store kubernetes:STATE_NS --run-id RUN_ID --take-over-lock [--window W ...]

- ``--run-id`` names the run after the Job (a CronJob: after itself and the target), so a pod
  that Kubernetes starts again (the old one was deleted, evicted or killed) continues the same
  run from its checkpoint in the cluster instead of planning a new one; a run already ``Done``
  is reported and left alone.
- ``--take-over-lock`` lets that pod take over the run's own lock once its holder stopped
  renewing it (a lock of any other run is refused, however stale): until then the pod exits 3
  and the Job's back-off retries it (``backoffLimit``), so the lease (60 s) runs out first.
- the state store is a ``kubernetes:`` store (checkpoint Secrets) in the Job's namespace by
  default: the pod keeps nothing on disk.
- an init container (same image, ``helm repo add linkerd URL``) gives helm, in the pod's empty
  home, the chart repository ``apply`` reads versions and charts from.
- the spec comes from a ConfigMap (key ``spec.yaml``) mounted read-only; a spec holding
  secrets (value overrides, a webhook URL with a token) belongs in a Secret: pass
  ``spec_secret`` instead.

The pod runs as a non-root user with a read-only root filesystem, no privilege escalation, no
capabilities and the runtime's default seccomp profile; ``HOME`` and helm's folders point at
an ``emptyDir``. ``restartPolicy: Never`` with ``podReplacementPolicy: Failed`` means a
replacement pod starts only once the previous one has stopped; ``POD_FAILURE_POLICY`` ends the Job
at once on bad input or preflight errors and does not count disruptions (evictions) as failures.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from upgrader.checkpoints import RUN_ID
from upgrader.errors import EXIT_BAD_INPUT, EXIT_NEEDS_OPERATOR, EXIT_PREFLIGHT, InputError
from upgrader.permissions import PolicyRule, Scope, rbac_rules

SPEC_DIR = "/etc/upgrader"
SPEC_KEY = "spec.yaml"
SPEC_PATH = f"{SPEC_DIR}/{SPEC_KEY}"
WORK_DIR = "/tmp/upgrader"  # noqa: S108 - an emptyDir of the pod's own, the only writable folder
RUN_AS_USER = 65532  # the image's numeric USER (Containerfile); any non-root UID works
BACKOFF_LIMIT = 6  # attempts: back-off 10 s, 20 s, 40 s, ... outlasts a dead holder's 60 s lease
LINKERD_REPO = "https://helm.linkerd.io/stable"
REPO_NAME = "linkerd"  # the name `apply` reads charts and versions under (its --repo default)
LABEL_APP = "app.kubernetes.io/name"
APP = "upgrader"

Manifest = dict[str, Any]

# Bad input (exit 2), preflight errors (exit 4) and a run that stopped for an operator (exit 6: Failed, Paused on
# a gate, rolled back) fail the Job at once: another attempt would meet the same, or act unattended.
# A pod evicted, preempted or drained (DisruptionTarget) is replaced without counting against backoffLimit.
POD_FAILURE_POLICY: Manifest = {
    "rules": [
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": "upgrader",
                "operator": "In",
                "values": [EXIT_BAD_INPUT, EXIT_PREFLIGHT, EXIT_NEEDS_OPERATOR],
            },
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
}


def run_id_for(name: str, target: str | None = None) -> str:
    """The run id a Job's pods share: the Job's name (a CronJob's: its name and the target)."""
    text = f"{name}-{target}" if target else name
    run_id = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not RUN_ID.fullmatch(run_id):
        raise InputError(
            f"cannot name a run after {text!r}: run ids are 2-52 lowercase letters, digits and dashes",
            hint="give the Job a shorter name, or pass run_id=",
        )
    return run_id


def job_args(
    *,
    target: str,
    run_id: str,
    state_namespace: str,
    spec: bool = True,
    windows: tuple[str, ...] = (),
    wait_for_window: bool = False,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The container's arguments (after the ``upgrader`` entrypoint), exactly as the pod runs them."""
    args = ["--log-format", "json", "apply", "--to", target]
    if spec:
        args += ["--spec", SPEC_PATH]
    args += ["--yes", "--state-store", f"kubernetes:{state_namespace}", "--run-id", run_id, "--take-over-lock"]
    for window in windows:
        args += ["--window", window]
    if wait_for_window:
        args.append("--wait-for-window")
    return [*args, *extra]


def _labels(name: str, labels: dict[str, str] | None) -> dict[str, str]:
    return {LABEL_APP: APP, "app.kubernetes.io/instance": name, **(labels or {})}


def pod_template(
    *,
    name: str,
    image: str,
    args: list[str],
    service_account: str,
    spec_config_map: str | None,
    spec_secret: str | None = None,
    labels: dict[str, str] | None = None,
    image_pull_policy: str = "IfNotPresent",
    resources: dict[str, Any] | None = None,
    helm_repo_url: str = LINKERD_REPO,
    image_pull_secrets: tuple[str, ...] = (),
) -> Manifest:
    """The pod of the Job: one container running ``upgrader`` with ``args`` under ``service_account``, after
    an init container that adds the chart repository ``helm_repo_url`` as ``linkerd``; the image pulled with
    ``image_pull_secrets`` (Secret names) when its registry needs them."""
    volumes: list[Manifest] = [{"name": "work", "emptyDir": {}}]
    mounts: list[Manifest] = [{"name": "work", "mountPath": WORK_DIR}]
    if spec_config_map and spec_secret:
        raise InputError("give the spec as a ConfigMap or a Secret, not both", hint="pass one of them")
    if spec_config_map:
        volumes.append(
            {"name": "spec", "configMap": {"name": spec_config_map, "items": [{"key": SPEC_KEY, "path": SPEC_KEY}]}}
        )
    if spec_secret:
        volumes.append(
            {"name": "spec", "secret": {"secretName": spec_secret, "items": [{"key": SPEC_KEY, "path": SPEC_KEY}]}}
        )
    if spec_config_map or spec_secret:
        mounts.append({"name": "spec", "mountPath": SPEC_DIR, "readOnly": True})
    env = [
        {"name": "HOME", "value": WORK_DIR},
        {"name": "XDG_CACHE_HOME", "value": f"{WORK_DIR}/cache"},
        {"name": "XDG_CONFIG_HOME", "value": f"{WORK_DIR}/config"},
        {"name": "XDG_STATE_HOME", "value": f"{WORK_DIR}/state"},
        {"name": "HELM_CACHE_HOME", "value": f"{WORK_DIR}/helm/cache"},
        {"name": "HELM_CONFIG_HOME", "value": f"{WORK_DIR}/helm/config"},
        {"name": "HELM_DATA_HOME", "value": f"{WORK_DIR}/helm/data"},
    ]
    hardened: Manifest = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    limits = resources or {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    init: Manifest = {
        "name": "helm-repo",
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["helm"],
        "args": ["repo", "add", REPO_NAME, helm_repo_url],
        "env": env,
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}],
        "securityContext": hardened,
        "resources": limits,
    }
    container: Manifest = {
        "name": "upgrader",
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        "securityContext": hardened,
        "resources": limits,
    }
    pulls = {"imagePullSecrets": [{"name": n} for n in image_pull_secrets]} if image_pull_secrets else {}
    return {
        "metadata": {"labels": _labels(name, labels)},
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": True,
            "restartPolicy": "Never",
            **pulls,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_USER,
                "runAsGroup": RUN_AS_USER,
                "fsGroup": RUN_AS_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [init],
            "containers": [container],
            "volumes": volumes,
        },
    }


def job_manifest(
    *,
    name: str,
    namespace: str,
    image: str,
    target: str,
    service_account: str = APP,
    spec_config_map: str | None = None,
    spec_secret: str | None = None,
    state_namespace: str | None = None,
    run_id: str | None = None,
    windows: tuple[str, ...] = (),
    wait_for_window: bool = False,
    backoff_limit: int = BACKOFF_LIMIT,
    active_deadline_seconds: int | None = None,
    ttl_seconds_after_finished: int | None = None,
    labels: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    helm_repo_url: str = LINKERD_REPO,
    image_pull_secrets: tuple[str, ...] = (),
) -> Manifest:
    """A ``batch/v1`` Job in ``namespace`` running ``upgrader apply --to target`` as ``service_account``.

    ``image`` is the image reference (pin it by digest); ``spec_config_map`` (or ``spec_secret``)
    names the object whose ``spec.yaml`` is the run's spec; ``state_namespace`` holds the
    checkpoints (default ``namespace``); ``run_id`` defaults to ``name`` (see ``run_id_for``);
    ``helm_repo_url`` is the chart repository the init container adds as ``linkerd``.
    The container's arguments are ``job_args(...)``; the ServiceAccount and its RBAC are not
    created here (the chart does, or ``rbac_rules_document`` for your own manifests).
    """
    rid = run_id or run_id_for(name)
    args = job_args(
        target=target,
        run_id=rid,
        state_namespace=state_namespace or namespace,
        spec=bool(spec_config_map or spec_secret),
        windows=windows,
        wait_for_window=wait_for_window,
        extra=extra_args,
    )
    spec: Manifest = {
        "backoffLimit": backoff_limit,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": POD_FAILURE_POLICY,
        "template": pod_template(
            name=name,
            image=image,
            args=args,
            service_account=service_account,
            spec_config_map=spec_config_map,
            spec_secret=spec_secret,
            labels=labels,
            helm_repo_url=helm_repo_url,
            image_pull_secrets=image_pull_secrets,
        ),
    }
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    if ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": _labels(name, labels),
            "annotations": {"upgrader.io/run-id": rid, "upgrader.io/target": target},
        },
        "spec": spec,
    }


def cronjob_manifest(
    *,
    name: str,
    namespace: str,
    image: str,
    target: str,
    schedule: str,
    time_zone: str | None = None,
    windows: tuple[str, ...] = (),
    **job: Any,
) -> Manifest:
    """A ``batch/v1`` CronJob starting the Job of ``job_manifest`` on ``schedule`` (cron syntax).

    Every scheduled Job runs the same run id (``name`` and ``target``): a run paused by its window
    (exit 5) is continued by the next one, and once it is ``Done`` the later ones do nothing until
    the target changes. With ``windows`` the run keeps to them and waits for the next opening
    (``--wait-for-window``); start the schedule at the window's opening. One Job at a time
    (``concurrencyPolicy: Forbid``). ``job`` takes ``job_manifest``'s other keywords.
    """
    job.setdefault("run_id", run_id_for(name, target))
    job.setdefault("wait_for_window", bool(windows))
    template = job_manifest(name=name, namespace=namespace, image=image, target=target, windows=windows, **job)
    spec: Manifest = {
        "schedule": schedule,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {"metadata": {"labels": template["metadata"]["labels"]}, "spec": template["spec"]},
    }
    if time_zone:
        spec["timeZone"] = time_zone
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {**template["metadata"], "name": name},
        "spec": spec,
    }


RBAC_SCOPES = (Scope.CLUSTER, Scope.CONTROL_PLANE, Scope.RELEASES, Scope.STATE, Scope.PROBE)

RBAC_HEADER = (
    "# Generated from upgrader.permissions (the table the cluster.permissions preflight check reads):\n"
    "# do not edit; regenerate with `upgrader rbac > deploy/chart/files/rbac-rules.yaml` (make chart-rbac).\n"
    "# One list of RBAC rules per scope: cluster -> a ClusterRole; control-plane, releases, state and\n"
    "# probe -> a Role in the control plane's, each Linkerd release's, the state store's and the\n"
    "# injector probe's namespace.\n"
)


def rbac_rules_by_scope() -> dict[str, list[PolicyRule]]:
    """Every scope's RBAC rules (``upgrader.permissions.rbac_rules``), keyed by the scope's name."""
    return {str(scope): rbac_rules(scope) for scope in RBAC_SCOPES}


def rbac_rules_document() -> str:
    """The chart's ``files/rbac-rules.yaml``: the header and ``rbac_rules_by_scope`` as YAML."""
    return RBAC_HEADER + yaml.safe_dump(rbac_rules_by_scope(), sort_keys=False, default_flow_style=False)
