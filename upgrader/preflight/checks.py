"""The preflight checks: pure functions of a ``Snapshot``, the plan and the spec.

Ids are stable (specs waive them by id). Categories: cluster, install, helm, control-plane,
identity, data-plane, values, crds, ha, disruption. An observation that could not be made
(e.g. forbidden by RBAC) makes the checks that need it fail with "cannot check: ..." rather
than pass silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from upgrader.catalog import Catalog
from upgrader.dataplane import budget_block, budget_hint
from upgrader.discovery import FINISHED, Installation, proxy_version
from upgrader.errors import InputError, UpgraderError
from upgrader.gatewayapi import STORED_CHECKED, HopLeg, plan_gateway_api
from upgrader.gatewayapi import observe as gateway_observe
from upgrader.permissions import access
from upgrader.pins import VALUES, Pin, describe, remedies
from upgrader.planning import (
    CONTROL_PLANE,
    CRDS,
    KUBERNETES_WAIVER,
    LEGACY,
    Observed,
    Plan,
    UpgradeRelease,
    find_pins,
    removed_extension_refusal,
)
from upgrader.ports import (
    Access,
    Budget,
    CertificateSecret,
    CustomResourceDefinition,
    DataPlaneView,
    Namespace,
    Pod,
    Webhook,
    WebhookEntry,
    Workload,
)
from upgrader.preflight import CheckResult, Severity, failed, passed
from upgrader.preflight.identity import check_identity
from upgrader.preflight.selectors import (
    blocks_pods_in,
    describe_selector,
    intercepts_pod_creation,
    namespace_labels,
    unknown_operators,
)
from upgrader.spec import Spec

CONTROL_PLANE_DEPLOYMENTS = ("linkerd-destination", "linkerd-identity", "linkerd-proxy-injector")
WEBHOOKS = (  # (kind, name, first major that has it): 2.10 had no policy validator
    ("mutating", "linkerd-proxy-injector-webhook-config", 10),
    ("validating", "linkerd-sp-validator-webhook-config", 10),
    ("validating", "linkerd-policy-validator-webhook-config", 11),
)
ISSUER_SECRET = "linkerd-identity-issuer"  # noqa: S105 - a Secret's name, not a password
EXEMPT_LABEL = "config.linkerd.io/admission-webhooks"
PENDING = ("pending-install", "pending-upgrade", "pending-rollback")


def required_access(namespace: str, *, releases: Iterable[str] = (), state: str | None = None) -> list[Access]:
    """The permissions a run uses (upgrader.permissions.REQUIRED) in the control-plane, ``releases`` and
    ``state`` (a kubernetes: store's; None: the control plane's) namespaces."""
    return access(namespace, releases=releases, state=state)


@dataclass(frozen=True)
class Snapshot:
    """Everything preflight observed; ``errors`` names observations that failed and why."""

    control_plane_namespace: str = "linkerd"
    kubernetes_version: str | None = None
    installation: Installation | None = None
    config_values: dict[str, Any] = field(default_factory=dict)
    namespaces: list[Namespace] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=list)
    webhooks: list[Webhook] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    crds: list[CustomResourceDefinition] = field(default_factory=list)
    access: list[Access] = field(default_factory=list)
    issuer: CertificateSecret | None = None
    trust_bundle: str | None = None
    user_values: dict[str, Any] | None = None
    meshed_pods: list[Pod] = field(default_factory=list)
    render_error: str | None = None  # helm template of the first hop's chart with the values to send
    target_crds: list[CustomResourceDefinition] | None = None  # for rollback plans
    crd_steps: dict[str, list[CustomResourceDefinition]] = field(default_factory=dict)  # chart version -> its CRDs
    crds_release_namespace: str | None = None  # where the linkerd-crds release lives (None: no such release)
    release_manifests: dict[str, list[str]] | None = None  # release -> the CRDs its manifest holds (linkerd-crds)
    errors: dict[str, str] = field(default_factory=dict)
    # gathering stopped after the access reviews because cluster.permissions fails: only the cluster checks run
    # (what else would be observed is partial, and the run cannot go on until the permissions are granted)
    stopped_at_permissions: bool = False


@dataclass(frozen=True)
class Context:
    snapshot: Snapshot
    plan: Plan
    catalog: Catalog
    spec: Spec
    now: dt.datetime
    min_cert_days: int = 60
    plan_offset: int = 0  # hops of the run before ``plan.hops[0]`` (a resumed run checks the rest)


def _cannot(id_: str, category: str, what: str, ctx: Context) -> CheckResult | None:
    if what in ctx.snapshot.errors:
        return failed(
            id_,
            category,
            f"cannot check: {ctx.snapshot.errors[what]}",
            "give the caller read access to it (see cluster.permissions)",
        )
    return None


# ---- cluster ---------------------------------------------------------------------------------
def check_cluster(ctx: Context) -> list[CheckResult]:
    snap, out = ctx.snapshot, []
    if "api" in snap.errors or snap.kubernetes_version is None:
        out.append(
            failed(
                "cluster.api-reachable",
                "cluster",
                f"the Kubernetes API did not answer: {snap.errors.get('api', 'no version')}",
                "check --kubeconfig/--context and the network",
            )
        )
        return out
    out.append(passed("cluster.api-reachable", "cluster", f"Kubernetes {snap.kubernetes_version} answers"))
    bad = []
    for number, hop in enumerate(ctx.plan.hops, start=ctx.plan_offset + 1):
        info = ctx.catalog.major(int(hop.major.split(".")[1]))
        if info is not None and not info.kubernetes.contains(snap.kubernetes_version):
            bad.append(
                f"hop {number} ({hop.from_} -> {hop.to}): Linkerd {hop.major} supports "
                f"{info.kubernetes.min}-{info.kubernetes.max}"
            )
    if bad:
        out.append(
            failed(
                KUBERNETES_WAIVER,
                "cluster",
                f"Kubernetes {snap.kubernetes_version} is outside the supported range: {'; '.join(bad)}",
                "upgrade or downgrade Kubernetes first, or waive "
                f"{KUBERNETES_WAIVER} in the spec if you accept the risk",
            )
        )
    else:
        out.append(
            passed(KUBERNETES_WAIVER, "cluster", f"Kubernetes {snap.kubernetes_version} is supported by every hop")
        )
    permissions = check_permissions(snap.access, snap.errors)
    if snap.stopped_at_permissions:
        note = "; no other check ran (each reads what these permissions allow)"
        permissions = permissions.model_copy(update={"message": permissions.message + note})
    out.append(permissions)
    return out


def check_permissions(reviewed: list[Access], errors: dict[str, str]) -> CheckResult:
    """``cluster.permissions``: every permission a run needs was reviewed and allowed (gather stops early on
    an error here, so it is decided from the access reviews alone)."""
    missing = _missing(reviewed)
    if "access" in errors:
        return failed(
            "cluster.permissions",
            "cluster",
            f"cannot check: {errors['access']}",
            "allow create on selfsubjectaccessreviews.authorization.k8s.io",
        )
    if missing:
        return failed(
            "cluster.permissions",
            "cluster",
            f"the caller lacks {sum(n for _, n in missing)} permission(s) a run needs: "
            + "; ".join(text for text, _ in missing),
            "run as a cluster admin, or bind roles granting these verbs (upgrader.permissions lists each with "
            "its reason; kubectl auth can-i --list shows what you have)",
        )
    return passed("cluster.permissions", "cluster", f"all {len(reviewed)} permissions a run needs")


def _missing(reviewed: list[Access]) -> list[tuple[str, int]]:
    """Refused permissions, the verbs of one resource in one place together ("get, patch deployments.apps in x")."""
    verbs: dict[tuple[str, str, str], list[str]] = {}
    for a in reviewed:
        if not a.allowed:
            verbs.setdefault((a.resource, a.group, a.namespace), []).append(a.verb)
    return [
        (str(Access(", ".join(vs), group, resource, namespace)), len(vs))
        for (resource, group, namespace), vs in verbs.items()
    ]


# ---- install method and Helm releases -------------------------------------------------------------
def check_install(ctx: Context) -> list[CheckResult]:  # noqa: PLR0911 - one return per finding
    snap = ctx.snapshot
    if (blocked := _cannot("install.method", "install", "helm", ctx)) is not None:
        return [blocked]
    inst = snap.installation
    ns = snap.control_plane_namespace
    created_by = {
        w.annotations.get("linkerd.io/created-by", "")
        for w in snap.workloads
        if w.namespace == ns and w.name in CONTROL_PLANE_DEPLOYMENTS
    }
    cli_made = sorted(c for c in created_by if c.startswith("linkerd/cli"))
    if inst is None or not inst.found:
        return [
            failed(
                "install.method",
                "install",
                f"no Linkerd installation found (no release, no {ns}/linkerd-config)",
                "install Linkerd with Helm first",
            )
        ]
    if inst.install_method == "cli":
        return [
            failed(
                "install.method",
                "install",
                f"Linkerd {inst.control_plane_version} in {ns} was installed "
                f"with the linkerd CLI ({', '.join(cli_made) or 'no Helm release'}); upgrader drives Helm "
                "and will not half-upgrade it",
                "migrate to Helm first: install linkerd-crds and "
                "linkerd-control-plane with Helm adopting the existing objects (label "
                "app.kubernetes.io/managed-by=Helm, annotate meta.helm.sh/release-name and "
                "release-namespace), or upgrade with `linkerd upgrade`",
            )
        ]
    if cli_made:
        return [
            failed(
                "install.method",
                "install",
                f"Helm release found but control-plane objects say {', '.join(cli_made)}: mixed install methods",
                "re-adopt the objects into the Helm "
                "release before upgrading (see linkerd2#15471 for what mixing does to CRDs)",
            )
        ]
    names = sorted({r.chart_name for r in inst.releases if r.chart_name in (CRDS, CONTROL_PLANE, LEGACY)})
    if names == [LEGACY]:
        return [passed("install.method", "install", "Helm release of the pre-2.12 linkerd2 chart")]
    if names != [CONTROL_PLANE, CRDS]:
        return [
            failed(
                "install.method",
                "install",
                f"expected Helm releases linkerd-crds and linkerd-control-plane, found {', '.join(names) or 'none'}",
                "install the missing chart so CRDs and control plane are upgraded in order",
            )
        ]
    version = inst.control_plane_version
    cp = next(r for r in inst.releases if r.chart_name == CONTROL_PLANE)
    if version and cp.app_version and cp.app_version != version:
        return [
            failed(
                "install.method",
                "install",
                f"release {cp.namespace}/{cp.name} says {cp.app_version} but linkerd-config says {version}",
                f"find out who changed linkerd-config; helm history {cp.name} -n {cp.namespace}",
            )
        ]
    return [passed("install.method", "install", f"Helm releases {', '.join(names)} in {ns} match linkerd-config")]


def check_releases(ctx: Context) -> list[CheckResult]:
    if (blocked := _cannot("helm.release-state", "helm", "helm", ctx)) is not None:
        return [blocked]
    inst = ctx.snapshot.installation
    releases = inst.releases if inst else ()
    out = []
    for r in releases:
        rid = "helm.release-state"
        if r.status in PENDING:
            out.append(
                failed(
                    rid,
                    "helm",
                    f"release {r.namespace}/{r.name} is stuck in {r.status} at revision "
                    f"{r.revision}: Helm will refuse every operation ('another operation is in progress')",
                    "if no helm command is running, unlock it by rolling back to the last deployed "
                    f"revision (helm history {r.name} -n {r.namespace}; helm rollback {r.name} <rev> -n "
                    f"{r.namespace}); nothing is unlocked automatically",
                )
            )
        elif r.status == "failed":
            out.append(
                failed(
                    rid,
                    "helm",
                    f"release {r.namespace}/{r.name} revision {r.revision} failed",
                    f"read helm history {r.name} -n {r.namespace}; an upgrade may still succeed",
                    severity="warning",
                )
            )
        elif r.status != "deployed":
            out.append(
                failed(
                    rid,
                    "helm",
                    f"release {r.namespace}/{r.name} is {r.status}",
                    "bring it back to deployed before upgrading",
                )
            )
    if not out:
        out.append(passed("helm.release-state", "helm", f"{len(releases)} Linkerd release(s) deployed"))
    return out


# ---- control plane ---------------------------------------------------------------------------------
def _installed_major(ctx: Context) -> int | None:
    """The installed control plane's major, when linkerd-config says a version the catalog can place."""
    inst = ctx.snapshot.installation
    if inst is None or not inst.control_plane_version:
        return None
    try:
        return ctx.catalog.parse(inst.control_plane_version).major
    except UpgraderError:
        return None


def check_control_plane(ctx: Context) -> list[CheckResult]:
    snap = ctx.snapshot
    if (blocked := _cannot("control-plane.deployments", "control-plane", "workloads", ctx)) is not None:
        return [blocked]
    ns = snap.control_plane_namespace
    found = {w.name: w for w in snap.workloads if w.namespace == ns and w.kind == "Deployment"}
    out = []
    missing = [d for d in CONTROL_PLANE_DEPLOYMENTS if d not in found]
    unavailable = [
        f"{d} ({found[d].available}/{found[d].replicas} available)"
        for d in CONTROL_PLANE_DEPLOYMENTS
        if d in found and found[d].available < found[d].replicas
    ]
    if missing or unavailable:
        out.append(
            failed(
                "control-plane.deployments",
                "control-plane",
                f"in {ns}: {'missing ' + ', '.join(missing) + '; ' if missing else ''}"
                f"{'not available: ' + ', '.join(unavailable) if unavailable else ''}".strip("; "),
                f"kubectl -n {ns} get deploy,pods; fix the control plane before upgrading it",
            )
        )
    else:
        out.append(passed("control-plane.deployments", "control-plane", f"{len(found)} deployments available"))
    not_ready = [
        f"{d} ({found[d].ready}/{found[d].replicas} ready)"
        for d in CONTROL_PLANE_DEPLOYMENTS
        if d in found and found[d].ready < found[d].replicas
    ]
    # The Deployment counters can look fine while a rollout's new pods stay Pending (an unschedulable
    # nodeSelector of a failed upgrade; the old ReplicaSet still serves): every pod counts.
    stuck = sorted(
        f"{p.name} ({p.phase or 'not ready'})"
        for p in snap.meshed_pods
        if p.namespace == ns and p.phase not in ("Succeeded", "Failed", "Terminating") and not p.ready
    )
    not_ready += stuck
    out.append(
        failed(
            "control-plane.pods-ready",
            "control-plane",
            f"pods not ready: {', '.join(not_ready[:8])}{' ...' if len(not_ready) > 8 else ''}",
            f"kubectl -n {ns} describe pods; pods kept Pending by a failed helm revision (helm history "
            f"linkerd-control-plane -n {ns}) are replaced by the upgrade, which carries the last deployed "
            "revision's values: then waive control-plane.pods-ready in the spec",
        )
        if not_ready
        else passed("control-plane.pods-ready", "control-plane", "every control-plane pod is ready")
    )
    inst = snap.installation
    if snap.config_values.get("highAvailability") or (inst is not None and inst.high_availability):
        # HA is recognised by the flag (2.14+) or by what is installed (replicas, PDBs, anti-affinity)
        single = [d for d in CONTROL_PLANE_DEPLOYMENTS if d in found and found[d].replicas <= 1]
        evidence = "; ".join(inst.ha_evidence) if inst is not None and inst.ha_evidence else "highAvailability: true"
        out.append(
            failed(
                "control-plane.ha-replicas",
                "control-plane",
                f"HA is on ({evidence}) but {', '.join(single)} run(s) a single replica",
                "install with the chart's values-ha.yaml (3 replicas)",
            )
            if single
            else passed("control-plane.ha-replicas", "control-plane", f"HA ({evidence}): >1 replica each")
        )
    present = {(w.kind, w.name) for w in snap.webhooks}
    major = _installed_major(ctx)
    absent = [name for kind, name, since in WEBHOOKS if (kind, name) not in present and (major or 99) >= since]
    out.append(
        failed(
            "control-plane.webhooks",
            "control-plane",
            f"missing webhook configuration(s): {', '.join(absent)}",
            "reinstall the control plane chart; new pods will not be meshed",
        )
        if absent
        else passed("control-plane.webhooks", "control-plane", "webhook configurations present")
    )
    return out


# ---- identity --------------------------------------------------------------------------------------
def check_certificates(ctx: Context) -> list[CheckResult]:
    snap = ctx.snapshot
    if (blocked := _cannot("identity.issuer-parse", "identity", "identity", ctx)) is not None:
        return [blocked]
    scheme = str(((snap.config_values.get("identity") or {}).get("issuer") or {}).get("scheme") or "linkerd.io/tls")
    certs = snap.issuer.certificates if snap.issuer else {}
    issuer = certs.get("crt.pem") or certs.get("tls.crt")
    values_anchors = (snap.user_values or {}).get("identityTrustAnchorsPEM")
    return check_identity(
        trust_anchors_pem=snap.trust_bundle,
        issuer_crt_pem=issuer,
        scheme=scheme,
        values_trust_anchors_pem=values_anchors,
        now=ctx.now,
        min_valid_days=ctx.min_cert_days,
        run_hours=ctx.plan.estimated_minutes / 60,
        namespace=snap.control_plane_namespace,
    )


# ---- data plane ------------------------------------------------------------------------------------
def check_data_plane(ctx: Context) -> list[CheckResult]:
    snap = ctx.snapshot
    inst = snap.installation
    out = []
    current = None
    if inst and inst.control_plane_version:
        try:
            current = ctx.catalog.parse(inst.control_plane_version)
        except InputError:
            current = None
    skewed, unreadable = [], []
    for pod in snap.meshed_pods:
        version = proxy_version(pod)
        if version is None or pod.phase in FINISHED:  # a finished Job's pod runs no proxy any more
            continue
        try:
            parsed = ctx.catalog.parse(version)
        except InputError:
            unreadable.append(f"{pod.namespace}/{pod.name}")
            continue
        if current is not None and abs(parsed.major - current.major) > 1:
            skewed.append(f"{pod.namespace}/{pod.name} ({parsed})")
    if skewed:
        namespaces = sorted({s.split("/")[0] for s in skewed})
        out.append(
            failed(
                "data-plane.version-skew",
                "data-plane",
                f"{len(skewed)} pod(s) run proxies more than one "
                f"major from the control plane ({current}): {', '.join(skewed[:10])}"
                f"{' ...' if len(skewed) > 10 else ''}",
                f"restart the workloads in "
                f"{', '.join(namespaces)} on the current control plane first (kubectl rollout restart)",
            )
        )
    else:
        out.append(passed("data-plane.version-skew", "data-plane", "every readable proxy is within one major"))
    out.append(
        failed(
            "data-plane.unreadable-proxies",
            "data-plane",
            f"proxy version unreadable (pinned by digest?) for: {', '.join(unreadable[:20])}",
            "set linkerd.io/proxy-version or use tagged images; these pods are restarted but not verified by version",
            severity="warning",
        )
        if unreadable
        else passed(
            "data-plane.unreadable-proxies", "data-plane", "every proxy version is readable", severity="warning"
        )
    )
    return out


# ---- values ----------------------------------------------------------------------------------------
def _has(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_values(ctx: Context) -> list[CheckResult]:
    snap, out = ctx.snapshot, []
    user = snap.user_values
    if user is None:
        return [
            failed(
                "values.migrations",
                "values",
                f"cannot check: {snap.errors.get('values', 'no user values')}",
                "let the caller read the control-plane release (helm get values)",
            )
        ]
    notes = []
    for hop in ctx.plan.hops:
        changes = hop.values_changes
        notes += [f"{key} is removed in {hop.major} (drop it)" for key in changes.get("removed", []) if _has(user, key)]
        notes += [
            f"{old} is renamed to {new} in {hop.major} (move it)"
            for old, new in changes.get("renamed", {}).items()
            if _has(user, old)
        ]
    out.append(
        failed(
            "values.migrations",
            "values",
            "user values need migration: " + "; ".join(notes),
            "upgrader migrates renamed keys and drops removed ones per the catalog; review the values diff in the plan",
            severity="warning",
        )
        if notes
        else passed(
            "values.migrations", "values", "no user value is removed or renamed by the plan", severity="warning"
        )
    )
    if ctx.spec.values.strategy == "reuse":
        missing = [
            f"{key} (new in {hop.major})"
            for hop in ctx.plan.hops
            for key in hop.values_changes.get("new_required", [])
            if not _has(user, key)
        ]
        if missing:
            out.append(
                failed(
                    "values.required",
                    "values",
                    f"the reuse strategy keeps the old chart's defaults and would miss: {', '.join(missing)}",
                    "use strategy reset-then-reuse (the default)",
                )
            )
        else:
            out.append(passed("values.required", "values", "every newly required key is present"))
    else:
        out.append(
            passed(
                "values.required",
                "values",
                f"strategy {ctx.spec.values.strategy} takes new keys from the target chart's defaults",
            )
        )
    if "render" in snap.errors:
        out.append(
            failed(
                "values.render",
                "values",
                f"cannot check: {snap.errors['render']}",
                "add the Linkerd Helm repository (helm repo add linkerd ...) so the chart can be rendered",
            )
        )
    elif snap.render_error:
        out.append(
            failed(
                "values.render",
                "values",
                f"the values to send do not render the target chart: {snap.render_error}",
                "fix or migrate the values named in the error (--spec values)",
            )
        )
    elif ctx.plan.hops:
        out.append(
            passed(
                "values.render",
                "values",
                f"the values render {CONTROL_PLANE} {ctx.plan.hops[0].charts.get(CONTROL_PLANE)}",
            )
        )
    return out


# ---- CRDs ------------------------------------------------------------------------------------------
def check_crds(ctx: Context) -> list[CheckResult]:
    snap = ctx.snapshot
    if (blocked := _cannot("crds.present", "crds", "crds", ctx)) is not None:
        return [blocked]
    linkerd = {c.name: c for c in snap.crds if c.name.endswith("linkerd.io")}
    out = [
        failed(
            "crds.present",
            "crds",
            "no Linkerd CRD found (serviceprofiles.linkerd.io, servers.policy...)",
            "install the linkerd-crds chart",
        )
        if not linkerd
        else passed("crds.present", "crds", f"{len(linkerd)} Linkerd CRDs")
    ]
    checked = {c.name: c for c in snap.crds if c.name.endswith(STORED_CHECKED)}  # as the executor checks them
    rollback = any(h.kind == "rollback" for h in ctx.plan.hops)
    if rollback and snap.target_crds is not None:
        served = {c.name: set(c.served) for c in snap.target_crds}
        lost = [
            f"{name} stores {', '.join(sorted(set(c.stored_versions) - served[name]))}"
            for name, c in sorted(checked.items())
            if name in served and set(c.stored_versions) - served[name]
        ]
        out.append(
            failed(
                "crds.rollback-stored-versions",
                "crds",
                f"the older linkerd-crds chart does not serve "
                f"versions still stored: {'; '.join(lost)}; the API server would reject the CRD rollback",
                "keep the CRDs (the default: rollback without --include-crds)",
            )
            if lost
            else passed("crds.rollback-stored-versions", "crds", "every stored version is served by the older chart")
        )
    return out + _check_crd_steps(ctx, checked)


def check_gateway_api(ctx: Context) -> list[CheckResult]:
    """The Gateway API route CRDs as they are now (``upgrader.gatewayapi``). A plan made against observed CRDs
    (and linkerd-crds' user values) stands while they are unchanged; an offline plan is decided again here."""
    if (blocked := _cannot("crds.gateway-api", "crds", "crds", ctx)) is not None:
        return [blocked]
    hops = ctx.plan.hops
    if not hops:
        return []
    crds = gateway_observe(ctx.snapshot.crds, ctx.snapshot.release_manifests)
    legs = [
        HopLeg(
            previous=ctx.catalog.parse(h.from_),
            stop=ctx.catalog.parse(h.to),
            sends_crds=any(isinstance(s, UpgradeRelease) and s.release == CRDS for s in h.steps),
        )
        for h in hops
    ]
    decided = plan_gateway_api(
        crds,
        legs,
        ctx.catalog,
        choice=ctx.spec.gateway_api,
        release=CRDS,
        namespace=ctx.snapshot.crds_release_namespace or ctx.snapshot.control_plane_namespace,
        # later in a run, a switch the plan sends off stands for linkerd-crds' user values (not in the snapshot)
        user_values={k: v for h in hops for k, v in h.crds_values.items() if v is False} if ctx.plan_offset else None,
    )
    seen = "; ".join(
        f"{c.short}: {c.owner()}, bundle {c.bundle or 'unknown'}" if c.present else f"{c.short}: absent" for c in crds
    )
    again = "plan again against the cluster (upgrader plan), then apply that plan"
    # Before a later hop of the run (plan_offset > 0) the earlier hops changed the CRDs on purpose: the
    # plan-time observation no longer applies, the decision made again against the live CRDs must agree.
    if ctx.plan.gateway_api_crds is not None and ctx.plan_offset == 0:
        if [c.as_dict() for c in crds] != ctx.plan.gateway_api_crds:
            problem: str | None = f"the Gateway API CRDs changed since the plan was made (now: {seen})"
        else:
            problem = None
    elif decided.refusal is not None:
        return [failed("crds.gateway-api", "crds", f"{decided.refusal[1]} (now: {seen})", "see upgrader plan")]
    else:
        stale = [
            f"hop {n} ({h.from_} -> {h.to}) would send {h.crds_values or 'nothing'}, the CRDs now need {want}"
            for n, (h, want) in enumerate(zip(hops, decided.values, strict=True), start=ctx.plan_offset + 1)
            if any(h.crds_values.get(k) != v for k, v in want.items()) or (h.crds_values and not want)
        ]
        problem = (
            f"the plan was made against other Gateway API CRDs (or offline): {'; '.join(stale)} (now: {seen})"
            if stale
            else None
        )
    if problem is not None:
        return [failed("crds.gateway-api", "crds", problem, again)]
    handed = f"; {'; '.join(decided.warnings)}" if decided.warnings else ""
    return [passed("crds.gateway-api", "crds", f"gatewayAPI: {ctx.spec.gateway_api}; {seen}{handed}")]


def check_removed_extensions(ctx: Context) -> list[CheckResult]:
    """An extension a planned hop's major no longer ships, installed now (a resumed run or a later hop included)."""
    snap = ctx.snapshot
    if snap.installation is None or not ctx.plan.hops:
        return []
    releases = [(r.chart_name, r.name, r.namespace) for r in snap.installation.releases]
    labelled = {n.name: n.labels for n in snap.namespaces}
    busy = None if "workloads" in snap.errors else {w.namespace for w in snap.workloads}
    for number, hop in enumerate(ctx.plan.hops, start=ctx.plan_offset + 1):
        previous, stop = ctx.catalog.parse(hop.from_), ctx.catalog.parse(hop.to)
        info = ctx.catalog.major(stop.major)
        if info is None or stop.major <= previous.major:
            continue
        reason = removed_extension_refusal(
            number, previous, stop, info, releases=releases, labelled=labelled, busy=busy
        )
        if reason is not None:
            return [failed("extensions.removed", "extensions", reason, "uninstall it, then upgrader resume")]
    return [passed("extensions.removed", "extensions", "no installed extension is removed by a planned hop")]


def _check_crd_steps(ctx: Context, live: dict[str, CustomResourceDefinition]) -> list[CheckResult]:
    """Every CRD step that changes the linkerd-crds chart must serve each version the live CRDs store:
    the API server refuses a CRD whose spec.versions lose a status.storedVersions entry, half-way."""
    snap = ctx.snapshot
    if (blocked := _cannot("crds.stored-versions", "crds", "crd-steps", ctx)) is not None:
        return [blocked]
    if not snap.crd_steps:
        return []
    lost = []
    for version, rendered in sorted(snap.crd_steps.items()):
        served = {c.name: set(c.served) for c in rendered}
        lost += [
            f"linkerd-crds {version}: {name} stores {', '.join(sorted(set(c.stored_versions) - served[name]))}"
            for name, c in sorted(live.items())
            if name in served and set(c.stored_versions) - served[name]
        ]
    charts = ", ".join(sorted(snap.crd_steps))
    return [
        failed(
            "crds.stored-versions",
            "crds",
            f"a planned CRD step does not serve versions the live CRDs still store: {'; '.join(lost)}; "
            "the API server would reject it (status.storedVersions ... missing from spec.versions)",
            "plan to a target whose linkerd-crds chart serves them (upgrader plan shows the CRD steps), or keep the "
            "installed CRDs; never downgrade linkerd-crds",
        )
        if lost
        else passed("crds.stored-versions", "crds", f"linkerd-crds {charts} serve(s) every stored version")
    ]


# ---- HA hygiene and disruption -----------------------------------------------------------------------
def check_ha(ctx: Context) -> list[CheckResult]:
    snap = ctx.snapshot
    if (blocked := _cannot("ha.kube-system-exempt", "ha", "namespaces", ctx)) is not None:
        return [blocked]
    namespaces = {n.name: n for n in snap.namespaces}
    ns = snap.control_plane_namespace
    kube_system = namespaces.get("kube-system")
    out = [
        _cannot("ha.kube-system-exempt", "ha", "webhooks", ctx)
        or kube_system_exempt(snap.webhooks, kube_system.labels if kube_system else {})
    ]
    cp_ns = namespaces.get(ns)
    injected = cp_ns is not None and cp_ns.annotations.get("linkerd.io/inject") == "enabled"
    out.append(
        failed(
            "ha.control-plane-not-injected",
            "ha",
            f"namespace {ns} has linkerd.io/inject=enabled",
            f"kubectl annotate namespace {ns} linkerd.io/inject-",
        )
        if injected
        else passed("ha.control-plane-not-injected", "ha", f"namespace {ns} is not injection-enabled")
    )
    return out


def kube_system_exempt(webhooks: Iterable[Webhook], kube_system_labels: dict[str, str]) -> CheckResult:
    """``ha.kube-system-exempt``: no Linkerd webhook with failurePolicy Fail may intercept kube-system's pods.

    Judged on the live selectors, not on the version: from 2.12 the chart's injector selector
    skips kube-system by name; through 2.11 (or with an overridden selector) only the label does.
    """
    linkerd = [w for w in webhooks if w.name.startswith("linkerd")]
    hits = [(w, e) for w in linkerd for e in w.entries if blocks_pods_in(e, "kube-system", kube_system_labels)]
    if not hits:
        guarded = sorted(
            {w.name for w in linkerd for e in w.entries if e.failure_policy == "Fail" and intercepts_pod_creation(e)}
        )
        if guarded:
            return passed(
                "ha.kube-system-exempt", "ha", f"{', '.join(guarded)} (failurePolicy Fail) skip(s) kube-system"
            )
        return passed(
            "ha.kube-system-exempt", "ha", "no Linkerd webhook with failurePolicy Fail intercepts pod creation"
        )
    labels = namespace_labels("kube-system", kube_system_labels)
    shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    why = "; ".join(_why_blocked(w, e) for w, e in hits)
    labelled = {**kube_system_labels, EXEMPT_LABEL: "disabled"}
    label_helps = not any(blocks_pods_in(e, "kube-system", labelled) for _, e in hits)
    hint = (
        "exclude kube-system from the webhook: set the chart's proxyInjector.namespaceSelector to one with "
        "`kubernetes.io/metadata.name NotIn [kube-system]` (the chart default from 2.12), or use "
        "webhookFailurePolicy: Ignore"
    )
    if label_helps:
        hint = f"kubectl label namespace kube-system {EXEMPT_LABEL}=disabled; or {hint}"
    return failed(
        "ha.kube-system-exempt",
        "ha",
        f"{why} (kube-system's labels: {shown}): while the webhook is down no kube-system pod can be created",
        hint,
    )


def _why_blocked(webhook: Webhook, entry: WebhookEntry) -> str:
    """Why ``entry`` may intercept kube-system's pods: its namespaceSelector (and what fails closed)."""
    why = (
        f"{webhook.name} ({entry.name}) intercepts pod creation with failurePolicy Fail and its namespaceSelector "
        f"{describe_selector(entry.namespace_selector)} matches kube-system"
    )
    if unknown := unknown_operators(entry.namespace_selector):
        why += f" (operator {', '.join(unknown)} unknown to upgrader: counted as matching)"
    objects = entry.object_selector
    if objects is not None and (objects.match_labels or objects.match_expressions):
        why += (
            f"; its objectSelector {describe_selector(objects)} only narrows which pods: kube-system pods "
            "carrying those labels go through it"
        )
    return why


def check_disruption(ctx: Context) -> list[CheckResult]:
    """A budget that cannot absorb a restart (per the workload's own rollout strategy) would stall its wave."""
    snap = ctx.snapshot
    if (blocked := _cannot("disruption.pdb-allows-restart", "disruption", "budgets", ctx)) is not None:
        return [blocked]
    restarted = {ns for hop in ctx.plan.hops[:1] for w in hop.waves for ns in w.namespaces}
    stalls = sorted(
        (reason, budget_hint(w))
        for w in snap.workloads
        if w.namespace in restarted and (reason := budget_block(w, snap.budgets)) is not None
    )
    return [
        failed(
            "disruption.pdb-allows-restart",
            "disruption",
            f"the wave would stall: {'; '.join(reason for reason, _ in stalls)}",
            f"{'; '.join(hint for _, hint in stalls)} (or exclude it in the spec)",
        )
        if stalls
        else passed("disruption.pdb-allows-restart", "disruption", "every budget can absorb the restarts")
    ]


def _pins(ctx: Context) -> list[Pin]:
    """The plan's pins as observed now (a plan refused for its pins carries them)."""
    snap, plan = ctx.snapshot, ctx.plan
    if plan.refused is not None or not plan.hops:
        return list(plan.pins)
    releases = snap.installation.releases if snap.installation else ()
    cp = next((r for r in releases if r.chart_name in (CONTROL_PLANE, LEGACY)), None)
    observed = Observed(
        control_plane=None,
        control_plane_namespace=snap.control_plane_namespace,
        release_namespaces={r.name: r.namespace for r in releases},
        control_plane_release=cp.name if cp is not None else CONTROL_PLANE,
        control_plane_values=snap.user_values or {},
        data_plane_view=DataPlaneView(tuple(snap.namespaces), tuple(snap.workloads), tuple(snap.meshed_pods), ()),
    )
    namespaces = [ns for h in plan.hops for w in h.waves for ns in w.namespaces]
    return find_pins(observed, ctx.spec, [h.to for h in plan.hops], namespaces)


def check_pins(ctx: Context) -> list[CheckResult]:
    """Versions pinned in the values or on workloads: an error under ``pins: refuse``, a warning under ``report``."""
    severity: Severity = "error" if ctx.spec.pins == "refuse" else "warning"
    found = _pins(ctx)
    out = []
    for id_, category, mine, what, blocked in (
        ("values.pins", "values", [p for p in found if p.kind == VALUES], "values", ("values",)),
        ("data-plane.pins", "data-plane", [p for p in found if p.kind != VALUES], "workloads", ("workloads", "pods")),
    ):
        cannot = next((c for b in blocked if (c := _cannot(id_, category, b, ctx)) is not None), None)
        if cannot is not None:
            out.append(cannot)
        elif mine:
            then = "the run refuses them (pins: refuse)" if severity == "error" else "reported as pinned, not upgraded"
            out.append(failed(id_, category, f"pinned: {describe(mine)}; {then}", remedies(mine), severity=severity))
        else:
            out.append(passed(id_, category, f"no {what} pin a version", severity=severity))
    return out


CHECKS: tuple[Callable[[Context], list[CheckResult]], ...] = (
    check_cluster,
    check_install,
    check_releases,
    check_control_plane,
    check_certificates,
    check_data_plane,
    check_values,
    check_crds,
    check_gateway_api,
    check_removed_extensions,
    check_ha,
    check_disruption,
    check_pins,
)


def run_checks(ctx: Context) -> list[CheckResult]:
    """Every check, in category order, with the spec's waivers applied."""
    checks = (check_cluster,) if ctx.snapshot.stopped_at_permissions else CHECKS
    results = [r for check in checks for r in check(ctx)]
    if ctx.plan.refused:
        results.insert(
            0, failed("plan.refused", "plan", ctx.plan.refused.reason, f"see upgrader plan ({ctx.plan.refused.code})")
        )
    if ctx.plan.warnings:  # e.g. a wave that restarts nothing
        warnings = "; ".join(ctx.plan.warnings)
        results.insert(0, failed("plan.warnings", "plan", warnings, "fix dataPlane.waves in the spec", "warning"))
    waived = set(ctx.spec.waivers)
    return [r.model_copy(update={"waived": True}) if r.id in waived and r.result != "passed" else r for r in results]


def config_values(text: str | None) -> dict[str, Any]:
    loaded = yaml.safe_load(text or "") if text else None
    return loaded if isinstance(loaded, dict) else {}
