"""The permission table matches the Kubernetes calls the adapters make, and renders as RBAC rules.

The calls are found statically: every attribute of the adapters' source named like a method of the
Kubernetes client's API classes is one call, mapped to (API group, resource, verb) from the request
the client builds for it (HTTP method and path). A list method passed along instead of called (to a
watch or an informer) is a watch too. A new client call without a row in upgrader.permissions fails
here, whatever variable the API object sits in.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from tests.test_preflight_checks import check, healthy
from upgrader.errors import UpgraderError
from upgrader.permissions import PROBE_NAMESPACE, REQUIRED, Scope, access, rbac_rules
from upgrader.planning import Plan
from upgrader.ports import Access, HelmRelease
from upgrader.preflight.observe import gather

ADAPTERS = Path(__file__).resolve().parent.parent / "upgrader" / "adapters"
_SERIALIZE = re.compile(
    r"def _(?P<name>\w+)_serialize\(.*?method='(?P<method>[A-Z]+)',\s*resource_path='(?P<path>[^']+)'", re.DOTALL
)

Key = tuple[str, str, str]  # (group, resource, verb)


def _request(method: str, path: str) -> Key | None:
    """(group, resource, verb) of one client request; None for paths that are no resource (/version, discovery)."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    watching = rest[:1] == ["watch"]
    rest = rest[1:] if watching else rest
    if rest[:2] == ["namespaces", "{namespace}"] and len(rest) > 2:
        rest = rest[2:]
    if not rest:
        return None
    resource = f"{rest[0]}/{rest[2]}" if len(rest) > 2 else rest[0]
    named = len(rest) > 1
    verb = {
        "GET": "watch" if watching else ("get" if named else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }.get(method, "get")  # HEAD and OPTIONS (proxy subresources) need get
    return (group, resource, verb)


def _client_methods() -> dict[str, set[Key | None]]:
    """Every method of the client's API classes -> the (group, resource, verb) it may stand for."""
    out: dict[str, set[Key | None]] = {}
    for module in sorted((Path(kubernetes.client.__file__).parent / "api").glob("*_api.py")):
        for m in _SERIALIZE.finditer(module.read_text()):
            out.setdefault(m["name"], set()).add(_request(m["method"], m["path"]))
    return out


@dataclass(frozen=True)
class Call:
    where: str
    method: str
    candidates: frozenset[Key]


def _calls(methods: dict[str, set[Key | None]], sources: list[Path]) -> Iterator[Call]:
    for source in sources:
        tree = ast.parse(source.read_text(), filename=str(source))
        called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or node.attr not in methods:
                continue
            keys = {k for k in methods[node.attr] if k is not None}
            if not keys:
                continue  # /version and discovery: open to every authenticated user
            if id(node) not in called:  # handed to a watch or an informer (or called later)
                keys |= {(g, r, "watch") for g, r, v in keys if v == "list"}
            yield Call(f"{source.name}:{node.lineno}", node.attr, frozenset(keys))


METHODS = _client_methods()
# `rollout apply --in-cluster` creates each cluster's Job (and its spec Secret) from the operator's machine: calls a
# run never makes, so the run's table (and the RBAC rendered from it for the Job's ServiceAccount) leaves them out;
# upgrader.permissions.OPERATOR lists them instead, checked against this adapter below.
LAUNCHER = ("jobs.py",)
CALLS = list(_calls(METHODS, sorted(p for p in ADAPTERS.glob("*.py") if p.name not in LAUNCHER)))
LAUNCHER_CALLS = list(_calls(METHODS, [ADAPTERS / name for name in LAUNCHER]))
OURS = {(p.group, p.resource, p.verb) for p in REQUIRED if "upgrader" in p.by}  # helm's rows cover helm only


def test_the_request_of_a_client_method_is_read_from_the_client() -> None:
    """The scan knows which (group, resource, verb) a client method stands for."""
    assert METHODS["patch_namespaced_deployment"] == {("apps", "deployments", "patch")}
    assert METHODS["list_pod_for_all_namespaces"] == {("", "pods", "list")}
    assert METHODS["read_namespaced_config_map"] == {("", "configmaps", "get")}
    assert METHODS["replace_namespaced_lease"] == {("coordination.k8s.io", "leases", "update")}
    assert METHODS["create_self_subject_access_review"] == {
        ("authorization.k8s.io", "selfsubjectaccessreviews", "create")
    }
    assert METHODS["get_code"] == {None}


def test_the_scan_finds_the_calls_the_adapters_make() -> None:
    """The restart patch, the informers' watches, the lock and the dry-run probe are all seen."""
    found = {k for c in CALLS for k in c.candidates}
    assert {
        ("apps", "deployments", "patch"),
        ("apps", "statefulsets", "patch"),
        ("", "pods", "watch"),
        ("policy", "poddisruptionbudgets", "watch"),
        ("coordination.k8s.io", "leases", "update"),
        ("", "pods", "create"),
        ("", "secrets", "delete"),
    } <= found


def test_a_new_call_without_a_row_would_be_caught(tmp_path: Path) -> None:
    """Whatever the API object is called, a client method names its request; one upgrader's rows lack shows up."""
    source = tmp_path / "new_adapter.py"
    source.write_text("def note(api):\n    api.create_namespaced_config_map('linkerd', {})\n")
    (call,) = _calls(METHODS, [source])
    assert call.candidates == {("", "configmaps", "create")}
    assert not call.candidates & OURS, "helm creates ConfigMaps, but that row does not cover upgrader's own calls"


def test_every_client_call_of_the_adapters_has_a_row_in_the_table() -> None:
    """A call the table does not declare fails here: add its row to upgrader.permissions."""
    missing = [f"{c.where} {c.method} -> {sorted(c.candidates)}" for c in CALLS if not c.candidates & OURS]
    assert missing == []


def test_every_row_upgrader_uses_itself_is_a_call_the_adapters_make() -> None:
    """A row for upgrader's own calls that no adapter makes any more is stale."""
    made = {k for c in CALLS for k in c.candidates}
    stale = [str(p) for p in REQUIRED if "upgrader" in p.by and (p.group, p.resource, p.verb) not in made]
    assert stale == []


def test_rows_are_unique_and_say_why() -> None:
    """One row per verb, resource and scope; each with a reason and a user."""
    keys = [(p.group, p.resource, p.verb, p.scope) for p in REQUIRED]
    assert len(keys) == len(set(keys))
    assert all(p.why and p.by for p in REQUIRED)


def test_a_cluster_wide_row_absorbs_the_same_permission_in_one_namespace() -> None:
    """Listing Secrets everywhere (helm list -A) covers listing the checkpoint Secrets: one row, both reasons."""
    (row,) = [p for p in REQUIRED if (p.group, p.resource, p.verb) == ("", "secrets", "list")]
    assert row.scope is Scope.CLUSTER
    assert not row.namespaced
    assert set(row.by) == {"upgrader", "helm"}
    assert "checkpoints" in row.why
    assert "helm list" in row.why


@pytest.mark.parametrize(
    ("group", "resource", "verb", "scope"),
    [
        pytest.param("coordination.k8s.io", "leases", "update", Scope.CONTROL_PLANE, id="renewing the lock"),
        pytest.param("apps", "daemonsets", "patch", Scope.CLUSTER, id="restarting a DaemonSet anywhere"),
        pytest.param("apps", "replicasets", "watch", Scope.RELEASES, id="helm --wait follows ReplicaSets"),
        pytest.param("", "pods", "create", Scope.PROBE, id="the injector's dry-run probe"),
        pytest.param("apiextensions.k8s.io", "customresourcedefinitions", "get", Scope.CLUSTER, id="helm reads CRDs"),
        pytest.param(
            "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch", Scope.CLUSTER, id="the webhook"
        ),
        pytest.param("", "secrets", "update", Scope.RELEASES, id="helm's release records"),
    ],
)
def test_the_table_declares_what_a_run_uses(group: str, resource: str, verb: str, scope: Scope) -> None:
    """Permissions the old preflight did not check are rows now."""
    assert any((p.group, p.resource, p.verb, p.scope) == (group, resource, verb, scope) for p in REQUIRED)


def test_access_places_each_row_in_its_namespaces() -> None:
    """Cluster rows are asked cluster-wide, release rows in every Linkerd release's namespace, the probe in default."""
    wanted = access("linkerd", releases=["linkerd", "linkerd-viz"], state="upgrader-state")
    assert Access("patch", "apps", "deployments", "") in wanted
    assert Access("update", "coordination.k8s.io", "leases", "linkerd") in wanted
    assert Access("patch", "apps", "deployments", "linkerd-viz") not in wanted  # covered cluster-wide
    assert Access("create", "apps", "deployments", "linkerd-viz") in wanted
    assert Access("create", "", "secrets", "upgrader-state") in wanted
    assert Access("create", "", "pods", PROBE_NAMESPACE) in wanted
    assert len(wanted) == len(set(wanted))


def test_without_release_namespaces_the_control_plane_namespace_stands_in() -> None:
    """Preflight before any release is known still asks about the release permissions, in the control plane's."""
    assert Access("create", "apps", "deployments", "mesh") in access("mesh")
    assert Access("create", "", "secrets", "mesh") in access("mesh")


def test_rbac_rules_render_every_row_once() -> None:
    """The rules of all scopes, expanded again, are exactly the table (so shipped RBAC can be generated from it)."""
    rendered = {
        (group, resource, verb, scope)
        for scope in Scope
        for rule in rbac_rules(scope)
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert rendered == {(p.group, p.resource, p.verb, p.scope) for p in REQUIRED}


def test_rbac_rules_group_resources_that_need_the_same_verbs() -> None:
    """The three workload kinds share one rule in the cluster-wide rules."""
    rules = rbac_rules(Scope.CLUSTER)
    assert {
        "apiGroups": ["apps"],
        "resources": ["daemonsets", "deployments", "statefulsets"],
        "verbs": [
            "list",
            "patch",
            "watch",
        ],
    } in rules


class _Kube:
    """Just enough of the preflight kube port: a cluster that answers and records the access asked about."""

    def __init__(self) -> None:
        self.asked: list[Access] = []

    def server_version(self) -> str:
        return "v1.36.3"

    def review_access(self, wanted: list[Access]) -> list[Access]:
        self.asked = list(wanted)
        return wanted

    def __getattr__(self, name: str) -> Any:
        def refused(*_args: object, **_kwargs: object) -> Any:
            raise UpgraderError(f"{name}: not in this fake")

        return refused


class _Helm(_Kube):
    def list_releases(self) -> list[Any]:
        return [
            HelmRelease("linkerd-control-plane", "linkerd", 3, "deployed", "linkerd-control-plane", "1.16.11"),
            HelmRelease("linkerd-viz", "linkerd-viz", 2, "deployed", "linkerd-viz", "30.12.11"),
            HelmRelease("shop", "shop", 1, "deployed", "shop", "1.0.0"),
        ]


def test_preflight_asks_about_every_row_in_the_linkerd_namespaces() -> None:
    """cluster.permissions reviews the whole table, in the control plane's and the extensions' namespaces."""
    kube = _Kube()
    snap = gather(kube, _Helm(), Plan(from_=None, to="stable-2.14.10", spec="{}"))  # type: ignore[arg-type]
    assert kube.asked == access("linkerd", releases=["linkerd", "linkerd-viz"])
    assert snap.access == kube.asked


def test_the_permissions_check_groups_what_is_missing_by_resource() -> None:
    """Refused verbs of one resource in one namespace are listed together, and counted one by one."""
    refused = {("get", "leases"), ("update", "leases"), ("patch", "daemonsets")}
    reviewed = [dataclasses.replace(a, allowed=(a.verb, a.resource) not in refused) for a in access("linkerd")]
    result = check(dataclasses.replace(healthy(), access=reviewed))["cluster.permissions"]
    assert result.result == "error"
    assert "lacks 3 permission(s)" in result.message
    assert "get, update leases.coordination.k8s.io in linkerd" in result.message
    assert "patch daemonsets.apps cluster-wide" in result.message


def test_preflight_gathers_for_a_data_plane_catch_up_hop_without_rendering() -> None:
    """A catch-up hop has no control-plane chart: gathering renders nothing and does not crash (KeyError before)."""
    from tests.test_hop_kinds import SCENARIOS  # noqa: PLC0415
    from tests.test_hop_kinds import _plan as hop_plan  # noqa: PLC0415

    plan = hop_plan(SCENARIOS["data-plane"])
    assert [h.kind for h in plan.hops] == ["data-plane"]
    rendered: list[str] = []
    helm = _Helm()
    helm.template = lambda *a, **k: rendered.append("template") or ""  # type: ignore[attr-defined,method-assign]
    snap = gather(_Kube(), helm, plan)  # type: ignore[arg-type]
    assert rendered == []
    assert snap.render_error is None


class _Refusing(_Kube):
    """A cluster that refuses ``refused`` (verb, resource) everywhere and records every other call made."""

    def __init__(self, refused: set[tuple[str, str]]) -> None:
        super().__init__()
        self.refused = refused
        self.calls: list[str] = []

    def review_access(self, wanted: list[Access]) -> list[Access]:
        self.asked = list(wanted)
        return [dataclasses.replace(a, allowed=(a.verb, a.resource) not in self.refused) for a in wanted]

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return super().__getattr__(name)


def test_a_refused_permission_ends_gathering_before_anything_else_is_observed() -> None:
    """With a permission refused, gathering stops after the access reviews; only the cluster checks run and
    cluster.permissions names the verb and resource."""
    kube = _Refusing({("patch", "deployments")})
    helm = _Helm()
    helm.template = lambda *a, **k: pytest.fail("rendered after a refused permission")  # type: ignore[attr-defined,method-assign]
    plan = Plan(from_=None, to="stable-2.14.10", spec="{}")
    snap = gather(kube, helm, plan, stop_on_refused=True)  # type: ignore[arg-type]
    assert snap.stopped_at_permissions
    assert kube.calls == ["get_config_map"]  # linkerd-config (which namespace), then nothing after the reviews
    results = check(snap)
    assert {r.category for r in results.values()} <= {"cluster", "plan"}
    assert results["cluster.permissions"].result == "error"
    assert "patch deployments.apps cluster-wide" in results["cluster.permissions"].message
    assert results["cluster.permissions"].message.endswith(
        "no other check ran (each reads what these permissions allow)"
    )


@pytest.mark.parametrize(
    ("refused", "stop", "stops"),
    [
        pytest.param(set(), True, False, id="every permission allowed: gathering goes on"),
        pytest.param({("patch", "deployments")}, False, False, id="cluster.permissions waived: gathering goes on"),
    ],
)
def test_gathering_goes_on_unless_a_permission_it_must_stop_for_is_refused(
    refused: set[tuple[str, str]], stop: bool, stops: bool
) -> None:
    """Gathering observes everything when nothing is refused, or when it was not asked to stop (a waiver)."""
    kube = _Refusing(refused)
    snap = gather(kube, _Helm(), Plan(from_=None, to="stable-2.14.10", spec="{}"), stop_on_refused=stop)  # type: ignore[arg-type]
    assert snap.stopped_at_permissions is stops
    assert {"list_workloads", "list_namespaces", "list_webhooks"} <= set(kube.calls)


@pytest.mark.parametrize(("waivers", "stop"), [([], True), (["cluster.permissions"], False)])
def test_preflight_stops_at_refused_permissions_unless_the_spec_waives_them(
    monkeypatch: pytest.MonkeyPatch, waivers: list[str], stop: bool
) -> None:
    """apply and preflight gather through runs.preflight: it asks gathering to stop early unless waived."""
    from upgrader import runs  # noqa: PLC0415
    from upgrader.spec import Spec  # noqa: PLC0415

    asked: dict[str, Any] = {}

    def gathered(*_args: object, **kw: Any) -> Any:
        asked.update(kw)
        raise UpgraderError("stopped by the test")

    monkeypatch.setattr(runs, "gather", gathered)
    monkeypatch.setattr(runs, "values_sender", lambda *_a: None)
    session = runs.Session(Spec(waivers=waivers), None, Plan(from_=None, to="stable-2.14.10", spec="{}"))  # type: ignore[arg-type]
    with pytest.raises(UpgraderError, match="stopped by the test"):
        runs.preflight(session, min_cert_days=60, repo="linkerd")
    assert asked["stop_on_refused"] is stop


def test_the_operators_job_launching_calls_are_the_operator_table_exactly() -> None:
    """Each client call of the Job launcher has a row in OPERATOR and each row a call (the run's table, and so the
    Jobs' ServiceAccount's RBAC, leaves them out); `rollout apply --help` lists them."""
    from typer.testing import CliRunner  # noqa: PLC0415

    from upgrader.cli import app  # noqa: PLC0415
    from upgrader.permissions import OPERATOR  # noqa: PLC0415

    rows = {(p.group, p.resource, p.verb) for p in OPERATOR}
    assert LAUNCHER_CALLS, "the scan found the launcher's calls"
    assert [f"{c.where} {c.method}" for c in LAUNCHER_CALLS if not c.candidates & rows] == []
    assert rows == {k for c in LAUNCHER_CALLS for k in c.candidates}
    shown = " ".join(CliRunner().invoke(app, ["rollout", "apply", "--help"], env={"COLUMNS": "1000"}).output.split())
    assert all(str(p) in shown for p in OPERATOR), shown


def test_apply_stops_right_after_discovery_when_a_permission_is_refused() -> None:
    """apply reviews the permissions before planning on: a refusal stops it with exit 4 naming the verb and resource
    (the state store's namespace asked about too); with every permission it goes on."""
    from upgrader.discovery import Installation  # noqa: PLC0415
    from upgrader.execution import PreflightStoppedError  # noqa: PLC0415
    from upgrader.runs import refuse_without_permissions  # noqa: PLC0415

    inst = Installation("v1.36.3", tuple(_Helm().list_releases()), control_plane_namespace="mesh")
    allowed = _Refusing(set())
    refuse_without_permissions(allowed, inst, "kubernetes:upgrader-state")
    assert allowed.asked == access("mesh", releases=["linkerd", "linkerd-viz", "mesh"], state="upgrader-state")
    with pytest.raises(PreflightStoppedError) as stopped:
        refuse_without_permissions(_Refusing({("create", "leases")}), None, None)
    assert stopped.value.exit_code == 4
    assert "cluster.permissions" in stopped.value.message
    assert "create leases.coordination.k8s.io in linkerd" in stopped.value.message
