"""Every Kubernetes permission a run uses, declared once.

``REQUIRED`` is read three ways: preflight asks the API server about each row (one
SelfSubjectAccessReview per verb, resource and namespace: the ``cluster.permissions`` check),
``rbac_rules`` renders the rows of one scope as RBAC PolicyRules (a ClusterRole for
``Scope.CLUSTER``, a Role in each namespace otherwise), and a test compares the rows used
``by`` upgrader with the Kubernetes client calls in ``upgrader/adapters`` (a call without a row,
or a row without a call, fails it).

Rows used by helm summarise what helm does for us and cannot be checked against our code:
its release records (one Secret per revision, listed in every namespace by ``helm list -A``)
and the objects of the Linkerd charts (control plane, CRDs, extensions), which an upgrade or a
rollback reads, creates, patches and deletes and which ``--wait`` lists and watches. helm writes
Linkerd's own Roles and ClusterRoles and their bindings; Kubernetes lets it only if the caller
holds every permission they grant, or may ``escalate`` and ``bind``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Literal, TypedDict

from upgrader.ports import Access

PROBE_NAMESPACE = "default"  # the injector's dry-run probe pod (webhooks skip linkerd's own namespace)

User = Literal["upgrader", "helm"]


class Scope(StrEnum):
    """Where a permission is needed."""

    CLUSTER = "cluster"  # a cluster-scoped resource, or a namespaced one in every namespace
    CONTROL_PLANE = "control-plane"  # the control-plane namespace (linkerd-config, the issuer, the lock)
    RELEASES = "releases"  # each Linkerd release's namespace (control plane and extensions)
    STATE = "state"  # the namespace of a kubernetes: state store (checkpoint Secrets)
    PROBE = "probe"  # PROBE_NAMESPACE


@dataclass(frozen=True)
class Permission:
    """One verb on one resource, where it is needed, why, and who uses it."""

    group: str  # "" is the core API group
    resource: str  # plural, as in RBAC rules
    verb: str
    scope: Scope
    why: str
    by: tuple[User, ...] = ("upgrader",)

    @property
    def namespaced(self) -> bool:
        """Whether a Role in the namespace(s) of ``scope`` grants it (else a ClusterRole must)."""
        return self.scope is not Scope.CLUSTER

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''} ({self.scope})"


class PolicyRule(TypedDict):
    """An RBAC rule, as in a Role or ClusterRole's ``rules``."""

    apiGroups: list[str]
    resources: list[str]
    verbs: list[str]


_READ_WRITE = ("get", "list", "watch", "create", "patch", "delete")  # what helm does to a chart's objects


def _rows(
    group: str, resources: Iterable[str], verbs: Iterable[str], scope: Scope, why: str, *by: User
) -> list[Permission]:
    return [Permission(group, r, v, scope, why, by or ("upgrader",)) for r in resources for v in verbs]


_DECLARED: list[Permission] = [
    # ---- upgrader's own calls (upgrader/adapters; checked against the code by tests/test_permissions.py)
    *_rows("", ["namespaces"], ["list", "watch"], Scope.CLUSTER, "namespace labels select waves; data-plane cache"),
    *_rows("", ["pods"], ["list", "watch"], Scope.CLUSTER, "discovery, control-plane pods, data-plane cache"),
    *_rows(
        "apps",
        ["deployments", "statefulsets", "daemonsets"],
        ["list", "watch"],
        Scope.CLUSTER,
        "the data-plane inventory and cache; waiting for each restart to roll out",
    ),
    *_rows(
        "apps",
        ["deployments", "statefulsets", "daemonsets"],
        ["patch"],
        Scope.CLUSTER,
        "restarting meshed workloads (a pod-template annotation, like kubectl rollout restart)",
    ),
    *_rows("apps", ["deployments"], ["get"], Scope.CONTROL_PLANE, "checking the control-plane deployments"),
    *_rows("policy", ["poddisruptionbudgets"], ["list", "watch"], Scope.CLUSTER, "disruption budgets gate restarts"),
    *_rows("", ["configmaps"], ["get"], Scope.CONTROL_PLANE, "linkerd-config and the trust roots"),
    *_rows("", ["secrets"], ["get"], Scope.CONTROL_PLANE, "the identity issuer's certificate (never its key)"),
    *_rows(
        "",
        ["secrets"],
        ["get", "list", "create", "update", "delete"],
        Scope.STATE,
        "checkpoints of a kubernetes: store",
    ),
    *_rows(
        "coordination.k8s.io",
        ["leases"],
        ["get", "create", "update", "patch", "delete"],
        Scope.CONTROL_PLANE,
        "the run lock (a Lease): taken, renewed by patch, given up by deleting it",
    ),
    *_rows("", ["pods"], ["create"], Scope.PROBE, "a server-side dry-run pod shows the proxy injector answers"),
    *_rows("apiextensions.k8s.io", ["customresourcedefinitions"], ["list"], Scope.CLUSTER, "stored CRD versions"),
    *_rows(
        "admissionregistration.k8s.io",
        ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
        ["list"],
        Scope.CLUSTER,
        "webhook failure policies",
    ),
    *_rows("authorization.k8s.io", ["selfsubjectaccessreviews"], ["create"], Scope.CLUSTER, "this preflight check"),
    # ---- helm: release records
    *_rows(
        "",
        ["secrets"],
        ["get", "list", "create", "update", "delete"],
        Scope.RELEASES,
        "helm's release records (one Secret per revision; old ones pruned by --history-max)",
        "helm",
    ),
    *_rows("", ["secrets"], ["list"], Scope.CLUSTER, "helm list --all-namespaces finds the releases", "helm"),
    # ---- helm: the objects of the Linkerd charts, in the releases' namespaces
    *_rows(
        "",
        ["configmaps", "secrets", "services", "serviceaccounts"],
        _READ_WRITE,
        Scope.RELEASES,
        "objects of the Linkerd charts (helm upgrade/rollback --wait)",
        "helm",
    ),
    *_rows("apps", ["deployments"], _READ_WRITE, Scope.RELEASES, "objects of the Linkerd charts (helm --wait)", "helm"),
    *_rows("apps", ["replicasets"], ["get", "list", "watch"], Scope.RELEASES, "helm --wait follows rollouts", "helm"),
    *_rows("", ["pods"], ["get", "list", "watch"], Scope.RELEASES, "helm --wait follows rollouts", "helm"),
    *_rows("batch", ["cronjobs", "jobs"], _READ_WRITE, Scope.RELEASES, "heartbeat CronJob; chart hook Jobs", "helm"),
    *_rows("policy", ["poddisruptionbudgets"], _READ_WRITE, Scope.RELEASES, "the charts' HA budgets", "helm"),
    *_rows(
        "rbac.authorization.k8s.io",
        ["roles", "rolebindings"],
        _READ_WRITE,
        Scope.RELEASES,
        "Linkerd's own Roles and bindings",
        "helm",
    ),
    *_rows(
        "policy.linkerd.io",
        [
            "servers",
            "serverauthorizations",
            "authorizationpolicies",
            "meshtlsauthentications",
            "networkauthentications",
            "httproutes",
        ],
        _READ_WRITE,
        Scope.RELEASES,
        "the extensions' policy objects",
        "helm",
    ),
    # ---- helm: cluster-scoped objects of the Linkerd charts
    *_rows(
        "rbac.authorization.k8s.io",
        ["clusterroles", "clusterrolebindings"],
        _READ_WRITE,
        Scope.CLUSTER,
        "Linkerd's ClusterRoles and bindings",
        "helm",
    ),
    *_rows(
        "rbac.authorization.k8s.io",
        ["clusterroles"],
        ["bind", "escalate"],
        Scope.CLUSTER,
        "writing ClusterRoles (and binding them) that grant what the caller need not hold",
        "helm",
    ),
    *_rows(
        "rbac.authorization.k8s.io",
        ["roles"],
        ["bind", "escalate"],
        Scope.RELEASES,
        "writing Roles (and binding them) that grant what the caller need not hold",
        "helm",
    ),
    *_rows(
        "admissionregistration.k8s.io",
        ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
        _READ_WRITE,
        Scope.CLUSTER,
        "the proxy injector's and validators' webhooks",
        "helm",
    ),
    *_rows(
        "apiextensions.k8s.io",
        ["customresourcedefinitions"],
        _READ_WRITE,
        Scope.CLUSTER,
        "linkerd-crds (an upgrade may add versions)",
        "helm",
    ),
    *_rows("apiregistration.k8s.io", ["apiservices"], _READ_WRITE, Scope.CLUSTER, "linkerd-viz's tap API", "helm"),
    *_rows("", ["namespaces"], ["get", "create", "patch", "delete"], Scope.CLUSTER, "extension charts", "helm"),
]


def _join(a: Permission, b: Permission) -> Permission:
    why = a.why if b.why in a.why else f"{a.why}; {b.why}"
    return replace(a, why=why, by=tuple(dict.fromkeys((*a.by, *b.by))))


def _merge(rows: list[Permission]) -> tuple[Permission, ...]:
    """One row per (group, resource, verb, scope), reasons and users joined; a CLUSTER row absorbs narrower ones."""
    cluster = {(p.group, p.resource, p.verb) for p in rows if p.scope is Scope.CLUSTER}
    merged: dict[tuple[str, str, str, Scope], Permission] = {}
    for p in rows:
        if (p.group, p.resource, p.verb) in cluster:
            p = replace(p, scope=Scope.CLUSTER)  # noqa: PLW2901 - the row, widened
        key = (p.group, p.resource, p.verb, p.scope)
        merged[key] = _join(merged[key], p) if key in merged else p
    return tuple(merged.values())


REQUIRED: tuple[Permission, ...] = _merge(_DECLARED)


@dataclass(frozen=True)
class OperatorPermission:
    """One verb on one resource that ``rollout apply --in-cluster`` uses from the operator's machine, in the
    Jobs' namespace of each cluster (never a run's: not in REQUIRED, not in the Jobs' ServiceAccount's RBAC)."""

    group: str
    resource: str
    verb: str
    why: str

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''}"


# upgrader/adapters/jobs.py's calls (checked against its code by tests/test_permissions.py); following a Job also
# reads its run's checkpoints, which the STATE rows of REQUIRED cover.
OPERATOR: tuple[OperatorPermission, ...] = (
    OperatorPermission("", "secrets", "create", "each run's spec, in a Secret beside its Job"),
    OperatorPermission("", "secrets", "update", "the spec Secret of a run launched again"),
    OperatorPermission("batch", "jobs", "create", "each cluster's run as a Job"),
    OperatorPermission("batch", "jobs/status", "get", "following the Job to its end"),
)


def operator_text() -> str:
    """OPERATOR as one line (``rollout apply --in-cluster``'s help)."""
    return ", ".join(str(p) for p in OPERATOR)


def access(
    control_plane: str,
    *,
    releases: Iterable[str] = (),
    state: str | None = None,
    probe: str = PROBE_NAMESPACE,
) -> list[Access]:
    """Every row of REQUIRED as the Access checks preflight asks about, one per namespace it applies to.

    ``releases`` are the namespaces of the Linkerd releases (the control plane's when empty);
    ``state`` the namespace of a kubernetes: state store (the control plane's when None).
    """
    where: dict[Scope, tuple[str, ...]] = {
        Scope.CLUSTER: ("",),
        Scope.CONTROL_PLANE: (control_plane,),
        Scope.RELEASES: tuple(dict.fromkeys(releases)) or (control_plane,),
        Scope.STATE: (state or control_plane,),
        Scope.PROBE: (probe,),
    }
    wanted = [Access(p.verb, p.group, p.resource, ns) for p in REQUIRED for ns in where[p.scope]]
    return list(dict.fromkeys(wanted))


def rbac_rules(scope: Scope) -> list[PolicyRule]:
    """The rows of ``scope`` as RBAC rules: per API group, resources that need the same verbs share a rule."""
    verbs: dict[tuple[str, str], list[str]] = {}
    for p in REQUIRED:
        if p.scope is scope:
            verbs.setdefault((p.group, p.resource), []).append(p.verb)
    shared: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (group, resource), vs in verbs.items():
        shared.setdefault((group, tuple(sorted(set(vs)))), []).append(resource)
    return [
        PolicyRule(apiGroups=[group], resources=sorted(resources), verbs=list(vs))
        for (group, vs), resources in sorted(shared.items())
    ]
