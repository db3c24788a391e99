"""Gather a preflight ``Snapshot`` through the ports.

Each observation is made once, cluster-wide where possible; one that fails (RBAC, a
missing repository) is recorded in ``Snapshot.errors`` under the name the checks look for,
so the checks say "cannot check" instead of passing. Nothing here decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import yaml

from upgrader.discovery import DATA_PLANE_SELECTOR, LINKERD_CHARTS, carried_values, summarise
from upgrader.errors import ChartNotFoundError, NeverDeployedError, UpgraderError
from upgrader.planning import CONTROL_PLANE, CRDS, Plan, UpgradeRelease, control_plane_step
from upgrader.ports import (
    Access,
    Budget,
    CustomResourceDefinition,
    HelmPort,
    HelmRelease,
    Pod,
    PreflightKubePort,
    ReleaseObject,
    Workload,
)
from upgrader.preflight.checks import (
    ISSUER_SECRET,
    Snapshot,
    check_permissions,
    config_values,
    required_access,
)

T = TypeVar("T")


class PreflightHelmPort(HelmPort, Protocol):
    def template(self, chart: str, version: str, namespace: str, values: dict[str, Any]) -> str: ...

    def manifest(self, release: str, namespace: str) -> list[ReleaseObject]: ...


def crds_from_manifests(text: str) -> list[CustomResourceDefinition]:
    """The CRDs (and their served/storage versions) in rendered manifests."""
    out = []
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            versions = doc["spec"].get("versions", [])
            out.append(
                CustomResourceDefinition(
                    name=doc["metadata"]["name"],
                    served=tuple(v["name"] for v in versions if v.get("served")),
                    storage=next((v["name"] for v in versions if v.get("storage")), ""),
                )
            )
    return out


def _crd_steps(  # noqa: PLR0917 - gather's own observations, passed on
    helm: PreflightHelmPort,
    plan: Plan,
    releases: list[HelmRelease],
    repo: str,
    namespace: str,
    attempt: Callable[[str, Callable[[], str], str], str],
) -> dict[str, list[CustomResourceDefinition]]:
    """The CRDs of every linkerd-crds chart the plan's CRD steps would install (those that change the chart)."""
    installed = next((r.chart_version for r in releases if r.name == CRDS), None)
    wanted = sorted(
        {
            s.chart_version
            for h in plan.hops
            for s in h.steps
            if isinstance(s, UpgradeRelease) and s.release == CRDS and s.chart_version not in (None, installed)
        }
        - {None}
    )
    out = {}
    for version in wanted:
        chart_version: str = version or ""

        def render(v: str = chart_version) -> str:
            return helm.template(f"{repo}/{CRDS}", v, namespace, {})

        rendered = attempt("crd-steps", render, "")
        if rendered:
            out[version] = crds_from_manifests(rendered)
    return out


def _carried(helm: PreflightHelmPort, release: HelmRelease) -> dict[str, Any]:
    """``carried_values`` of ``release``; never deployed, the error carries its hint (checks show the message)."""
    try:
        return carried_values(helm, release.name, release.namespace)[0]
    except NeverDeployedError as exc:
        raise NeverDeployedError(f"{exc.message} ({exc.hint})") from exc


def gather(
    kube: PreflightKubePort,
    helm: PreflightHelmPort,
    plan: Plan,
    *,
    namespace: str = "linkerd",
    repo: str = "linkerd",
    values_to_send: Callable[[dict[str, Any]], dict[str, Any]] | None = None,  # user values -> what apply sends
    state_namespace: str | None = None,  # a kubernetes: state store's namespace
    stop_on_refused: bool = False,
) -> Snapshot:
    """Observe everything the checks need; failures become ``errors`` entries.

    The permissions a run needs are reviewed first, once the namespaces are known; with ``stop_on_refused``
    (``cluster.permissions`` not waived) a refusal ends the gathering there (``stopped_at_permissions``).
    """
    errors: dict[str, str] = {}

    def attempt(name: str, call: Callable[[], T], default: T) -> T:
        try:
            return call()
        except UpgraderError as exc:
            errors[name] = exc.message
            return default

    version = attempt("api", kube.server_version, None)
    if version is None:
        return Snapshot(control_plane_namespace=namespace, errors=errors)
    releases: list[HelmRelease] = attempt("helm", helm.list_releases, [])
    cp = next((r for r in releases if r.chart_name in (CONTROL_PLANE, "linkerd2")), None)
    default_namespace = namespace
    namespace = cp.namespace if cp else namespace
    config = attempt("config", lambda: kube.get_config_map(namespace, "linkerd-config"), None)
    if config is None and namespace != default_namespace:  # a linkerd2 release recorded in `default`
        namespace = default_namespace
        config = attempt("config", lambda: kube.get_config_map(namespace, "linkerd-config"), None)
    linkerd_ns = sorted({namespace} | {r.namespace for r in releases if r.chart_name in LINKERD_CHARTS})
    access: list[Access] = attempt(
        "access", lambda: kube.review_access(required_access(namespace, releases=linkerd_ns, state=state_namespace)), []
    )
    if stop_on_refused and check_permissions(access, errors).result == "error":
        return Snapshot(
            control_plane_namespace=namespace,
            kubernetes_version=version,
            access=access,
            errors=errors,
            stopped_at_permissions=True,
        )
    pods: list[Pod] = attempt("pods", lambda: kube.list_pods(label_selector=DATA_PLANE_SELECTOR), [])
    raw_values = config.get("values", "") if config is not None else None
    workloads: list[Workload] = attempt("workloads", kube.list_workloads, [])
    budgets: list[Budget] = attempt("budgets", kube.list_budgets, [])
    installation = summarise(version, releases, raw_values, pods, namespace, workloads=workloads, budgets=budgets)
    roots = attempt("identity", lambda: kube.get_config_map(namespace, "linkerd-identity-trust-roots"), None)
    user_values = None
    if cp is not None:  # the values an upgrade carries: the last deployed revision's (a failed one's never ran)
        user_values = attempt("values", lambda: _carried(helm, cp), None)
    render_error, target_crds = None, None
    if plan.hops and user_values is not None:
        hop = plan.hops[0]
        step = control_plane_step(hop)  # none in a data-plane catch-up hop: nothing to render
        if step is not None and step.chart_version is not None:
            values = values_to_send(user_values) if values_to_send else user_values
            try:
                helm.template(f"{repo}/{step.chart or step.release}", step.chart_version, namespace, values)
            except ChartNotFoundError as exc:  # the repository or the version is missing: cannot check
                errors["render"] = exc.message
            except UpgraderError as exc:  # the chart refuses these values
                render_error = exc.message
        if hop.kind == "rollback" and CRDS in hop.charts:
            rendered = attempt(
                "target-crds", lambda: helm.template(f"{repo}/{CRDS}", hop.charts[CRDS], namespace, {}), ""
            )
            target_crds = crds_from_manifests(rendered) if rendered else None
    crds_release = next((r for r in releases if r.chart_name == CRDS), None)
    crds_manifest = None
    if crds_release is not None:  # which Gateway API CRDs linkerd-crds still manages (upgrader.gatewayapi)
        objects = attempt("crds-manifest", lambda: helm.manifest(crds_release.name, crds_release.namespace), None)
        if objects is not None:
            crds_manifest = {crds_release.name: sorted(o.name for o in objects if o.kind == "CustomResourceDefinition")}
    return Snapshot(
        crds_release_namespace=crds_release.namespace if crds_release is not None else None,
        release_manifests=crds_manifest,
        crd_steps=_crd_steps(helm, plan, releases, repo, namespace, attempt),
        control_plane_namespace=namespace,
        kubernetes_version=version,
        installation=installation,
        config_values=config_values(raw_values),
        namespaces=attempt("namespaces", kube.list_namespaces, []),
        workloads=workloads,
        webhooks=attempt("webhooks", kube.list_webhooks, []),
        budgets=budgets,
        crds=attempt("crds", kube.list_crds, []),
        access=access,
        issuer=attempt("identity", lambda: kube.read_certificate_secret(namespace, ISSUER_SECRET), None),
        # 2.10 kept the anchors only in linkerd-config's values; the trust-roots ConfigMap came in 2.11
        trust_bundle=(roots or {}).get("ca-bundle.crt") or config_values(raw_values).get("identityTrustAnchorsPEM"),
        user_values=user_values,
        meshed_pods=pods,
        render_error=render_error,
        target_crds=target_crds,
        errors=errors,
    )
