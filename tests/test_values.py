"""Values sent to helm: defaults plus preserved user values, migrated, identity unchanged, diff redacted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fakes import MemoryStore
from tests.test_execution import NOW, FakeCluster
from upgrader.catalog import ValuesChanges, default_catalog
from upgrader.checkpoints import Checkpoint
from upgrader.execution import Executor
from upgrader.planning import Observed, Plan, build_offering, control_plane_step, ha_layers, hop_values, make_plan
from upgrader.ports import HelmRelease, HelmRevision
from upgrader.runs import Session, values_sender
from upgrader.spec import Spec, deep_merge
from upgrader.states import RunState
from upgrader.values import ValuesError, diff, migrate, outgoing, own_values, values_file

KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----"
USER: dict[str, Any] = {
    "identityTrustAnchorsPEM": "ANCHOR",
    "identity": {"issuer": {"tls": {"crtPEM": "CRT", "keyPEM": KEY}}},
    "proxyInit": {"resources": {"cpu": {"limit": "100m"}}},
    "controlPlaneTracing": True,
    "controllerReplicas": 3,
}
TARGET_DEFAULTS: dict[str, Any] = {
    "linkerdVersion": "edge-24.8.2",
    "controllerReplicas": 1,
    "controller": {"podDisruptionBudget": {"maxUnavailable": 1}},
    "identity": {"issuer": {"scheme": "linkerd.io/tls", "tls": {"crtPEM": "", "keyPEM": ""}}},
}
CAT = default_catalog()


def _changes(*majors: int) -> list[ValuesChanges]:
    return [m.values for m in CAT.majors if m.major in majors]


def test_reset_then_reuse_takes_new_defaults_and_keeps_user_values() -> None:
    """The target's new keys and linkerdVersion come from its defaults; user values and certificates survive."""
    out = outgoing(
        "reset-then-reuse", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides={}, changes=_changes(16)
    )
    assert (out.reset_values, out.reuse_values) == (True, False)
    assert out.effective["linkerdVersion"] == "edge-24.8.2"
    assert out.effective["controller"]["podDisruptionBudget"]["maxUnavailable"] == 1
    assert out.effective["controllerReplicas"] == 3
    assert out.effective["identity"]["issuer"]["tls"] == {"crtPEM": "CRT", "keyPEM": KEY}
    assert out.effective["identity"]["issuer"]["scheme"] == "linkerd.io/tls"
    assert "resources" not in out.effective.get("proxyInit", {}), "removed in 2.16"
    assert out.migration.dropped == ["proxyInit.resources"]


def test_renamed_keys_move_to_their_new_place() -> None:
    """2.19 moves controlPlaneTracing to controller.tracing.enabled."""
    migrated = migrate(USER, _changes(19))
    assert migrated.values["controller"]["tracing"]["enabled"] is True
    assert "controlPlaneTracing" not in migrated.values
    assert ("controlPlaneTracing", "controller.tracing.enabled") in migrated.moved
    assert USER["controlPlaneTracing"] is True, "the input is not modified"


def test_reuse_sends_only_overrides_with_reuse_values() -> None:
    """reuse keeps helm's --reuse-values semantics: only the spec's overrides travel."""
    out = outgoing(
        "reuse", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides={"proxy": {"logLevel": "x"}}, changes=[]
    )
    assert (out.values, out.reset_values, out.reuse_values) == ({"proxy": {"logLevel": "x"}}, False, True)


def test_reset_without_certificates_is_refused() -> None:
    """reset would drop the identity values: refused before anything is sent."""
    with pytest.raises(ValuesError, match="identityTrustAnchorsPEM"):
        outgoing("reset", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides={}, changes=[])


def test_overrides_that_rotate_certificates_on_purpose_are_allowed() -> None:
    """Certificates set in the spec's overrides are a deliberate change, not a trap."""
    overrides = {
        "identityTrustAnchorsPEM": "NEW",
        "identity": {"issuer": {"tls": {"crtPEM": "NEWCRT", "keyPEM": "NEWKEY"}}},
    }
    out = outgoing("reset", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides=overrides, changes=[])
    assert out.values["identityTrustAnchorsPEM"] == "NEW"


def test_diff_lists_changes_with_secrets_redacted() -> None:
    """The values diff names changed keys; the private key never appears, even when it changed."""
    new = json.loads(json.dumps(USER))
    new["controllerReplicas"] = 5
    new["identity"]["issuer"]["tls"]["keyPEM"] = KEY.replace("MHcC", "OTHER")
    rows = diff(USER, new)
    assert {"key": "controllerReplicas", "old": 3, "new": 5} in rows
    assert {"key": "identity.issuer.tls.keyPEM", "old": "<redacted>", "new": "<redacted> (changed)"} in rows
    assert "PRIVATE KEY" not in json.dumps(rows)


def test_chart_defaults_are_never_sent_as_user_values() -> None:
    """Only user values travel: helm would store sent defaults as user-supplied and the next hop would keep them."""
    out = outgoing(
        "reset-then-reuse", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides={}, changes=_changes(16)
    )
    assert "linkerdVersion" not in out.values
    assert "controller" not in out.values
    assert out.values["controllerReplicas"] == 3


def test_a_pinned_linkerd_version_in_user_values_is_dropped_and_reported() -> None:
    """A linkerdVersion left in user values (e.g. by an earlier tool) would freeze the images: dropped."""
    out = outgoing(
        "reset-then-reuse",
        target_defaults=TARGET_DEFAULTS,
        user_values={**USER, "linkerdVersion": "stable-2.13.7"},
        overrides={},
        changes=[],
    )
    assert "linkerdVersion" not in out.values
    assert out.effective["linkerdVersion"] == "edge-24.8.2"
    assert "linkerdVersion" in out.migration.dropped


# ---- HA: the target chart's values-ha.yaml under the user's own values ----------------------

# Shaped as Linkerd ships them (anchors and aliases included): 2.14 adds policyControllerResources
# and highAvailability to what 2.13's file sets.
HA_2_13 = """\
enablePodDisruptionBudget: true
deploymentStrategy:
  rollingUpdate:
    maxUnavailable: 1
    maxSurge: 25%
enablePodAntiAffinity: true
proxy:
  resources:
    cpu:
      request: 100m
    memory:
      limit: 250Mi
      request: 20Mi
controllerReplicas: 3
controllerResources: &controller_resources
  cpu: &controller_resources_cpu
    limit: ""
    request: 100m
  memory:
    limit: 250Mi
    request: 50Mi
destinationResources: *controller_resources
identityResources:
  cpu: *controller_resources_cpu
  memory:
    limit: 250Mi
    request: 10Mi
heartbeatResources: *controller_resources
proxyInjectorResources: *controller_resources
webhookFailurePolicy: Fail
spValidatorResources: *controller_resources
"""
HA_2_14 = HA_2_13 + "policyControllerResources: *controller_resources\nhighAvailability: true\n"
IDENTITY: dict[str, Any] = {
    "identityTrustAnchorsPEM": "ANCHOR",
    "identity": {"issuer": {"tls": {"crtPEM": "CRT", "keyPEM": KEY}}},
}


def _ha(text: str) -> dict[str, Any]:
    loaded = values_file(text, "values-ha.yaml")
    assert loaded is not None
    return loaded


def _installed_ha(own: dict[str, Any]) -> dict[str, Any]:
    """User values of an install made as Linkerd documents it: -f values-ha.yaml -f own values."""
    return deep_merge(deep_merge(_ha(HA_2_13), IDENTITY), own)


def test_values_file_reads_anchors_and_aliases() -> None:
    """values-ha.yaml's aliases resolve to the anchored maps."""
    loaded = _ha(HA_2_14)
    assert loaded["policyControllerResources"] == loaded["controllerResources"]
    assert loaded["identityResources"]["cpu"] == {"limit": "", "request": "100m"}
    assert values_file(None, "x") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("a: [unclosed\n", "not valid YAML", id="broken YAML is refused"),
        pytest.param("- a\n- b\n", "not a map", id="a list is refused"),
    ],
)
def test_a_broken_values_file_is_a_values_error(text: str, message: str) -> None:
    """A values-ha.yaml that is not a map of values stops before anything is sent."""
    with pytest.raises(ValuesError, match=message):
        values_file(text, "values-ha.yaml of linkerd-control-plane 1.16.11")


@pytest.mark.parametrize(
    ("user", "shipped", "own", "removed"),
    [
        pytest.param({"a": 1, "b": 2}, {"a": 1}, {"b": 2}, ["a"], id="a value equal to the file's is the file's"),
        pytest.param({"a": 5}, {"a": 1}, {"a": 5}, [], id="a different value is the user's"),
        pytest.param(
            {"p": {"r": {"cpu": "1", "mem": "2"}}},
            {"p": {"r": {"cpu": "1", "mem": "9"}}},
            {"p": {"r": {"mem": "2"}}},
            ["p.r.cpu"],
            id="nested maps are compared leaf by leaf",
        ),
        pytest.param({"p": {"r": 1}}, {"p": {"r": 1}}, {}, ["p.r"], id="a map left empty goes too"),
        pytest.param({"l": [1, 2]}, {"l": [1]}, {"l": [1, 2]}, [], id="lists are compared whole"),
        pytest.param(
            IDENTITY, IDENTITY, IDENTITY, [], id="the identity values always stay even when the file sets them"
        ),
    ],
)
def test_own_values_take_out_only_the_files_contributions(
    user: dict[str, Any], shipped: dict[str, Any], own: dict[str, Any], removed: list[str]
) -> None:
    """Only what the user set on top of the installed values-ha.yaml stays."""
    assert own_values(user, shipped) == (own, removed)


def test_ha_upgrade_layers_the_target_values_ha_under_the_users_own_values() -> None:
    """2.13 -> 2.14 HA: highAvailability and policyControllerResources arrive; the user's own settings win."""
    own = {"controllerReplicas": 5, "proxy": {"resources": {"memory": {"limit": "1Gi"}}}}
    user = _installed_ha(own)
    out = outgoing(
        "reset-then-reuse",
        target_defaults=TARGET_DEFAULTS,
        user_values=user,
        overrides={"proxy": {"logLevel": "debug"}},
        changes=_changes(14),
        ha_target=_ha(HA_2_14),
        ha_installed=_ha(HA_2_13),
    )
    assert out.ha_values is True
    assert out.values == deep_merge(
        deep_merge(deep_merge(_ha(HA_2_14), IDENTITY), own), {"proxy": {"logLevel": "debug"}}
    )
    assert out.values["highAvailability"] is True
    assert out.values["policyControllerResources"] == _ha(HA_2_14)["controllerResources"]
    assert out.values["controllerReplicas"] == 5
    assert out.values["proxy"]["resources"]["memory"] == {"limit": "1Gi", "request": "20Mi"}
    assert "controllerReplicas" not in out.ha_removed
    assert "enablePodDisruptionBudget" in out.ha_removed
    assert "proxy.resources.memory.limit" not in out.ha_removed
    rows = {r["key"]: r for r in diff(user, out.effective)}
    assert rows["highAvailability"] == {"key": "highAvailability", "old": None, "new": True}
    assert "policyControllerResources.cpu.request" in rows


def test_a_value_the_target_file_changes_follows_the_file_unless_the_user_set_it() -> None:
    """A setting the installed file made moves with the new file; one the user changed stays the user's."""
    target = deep_merge(_ha(HA_2_13), {"webhookFailurePolicy": "Ignore", "controllerReplicas": 4})
    out = outgoing(
        "reset-then-reuse",
        target_defaults={},
        user_values=_installed_ha({"controllerReplicas": 5}),
        overrides={},
        changes=[],
        ha_target=target,
        ha_installed=_ha(HA_2_13),
    )
    assert (out.values["webhookFailurePolicy"], out.values["controllerReplicas"]) == ("Ignore", 5)


def test_without_ha_layers_the_user_values_travel_as_they_are() -> None:
    """No target file (keep, or not HA): the old file's settings stay user values and 2.14's additions are missing."""
    user = _installed_ha({})
    out = outgoing("reset-then-reuse", target_defaults={}, user_values=user, overrides={}, changes=[])
    assert out.values == user
    assert (out.ha_values, out.ha_removed) == (False, [])
    assert "highAvailability" not in out.values
    assert "policyControllerResources" not in out.values


@pytest.mark.parametrize(
    ("strategy", "sent_keys", "reuse"),
    [
        pytest.param("reuse", {"highAvailability", "controllerReplicas", "identityTrustAnchorsPEM"}, True, id="reuse"),
        pytest.param("reset", {"highAvailability", "identityTrustAnchorsPEM"}, False, id="reset"),
    ],
)
def test_other_strategies_layer_the_target_file_too(strategy: str, sent_keys: set[str], reuse: bool) -> None:
    """reuse sends the target file under the user's own values; reset sends it under the overrides."""
    overrides = IDENTITY if strategy == "reset" else {}
    out = outgoing(
        strategy,  # type: ignore[arg-type]
        target_defaults=TARGET_DEFAULTS,
        user_values=_installed_ha({"controllerReplicas": 5}),
        overrides=overrides,
        changes=[],
        ha_target=_ha(HA_2_14),
        ha_installed=_ha(HA_2_13),
    )
    assert sent_keys <= set(out.values)
    assert out.reuse_values is reuse
    assert out.effective["highAvailability"] is True
    assert out.effective["controllerReplicas"] == (5 if strategy == "reuse" else 3)


# ---- the HA rule through plan, preflight and apply --------------------------------------------

CP_CHARTS = {"stable-2.13.7": "1.12.7", "stable-2.14.10": "1.16.11"}
HA_FILES = {"1.12.7": HA_2_13, "1.16.11": HA_2_14}


def _ha_plan(current: str, target: str, *, ha: bool = True, spec: Spec | None = None) -> Plan:
    offering, _ = build_offering(CAT, None)
    observed = Observed(CAT.parse(current), {"shop": {current: 2}}, "v1.24.0", high_availability=ha)
    return make_plan(observed, CAT.parse(target), offering, CAT, spec or Spec(waivers=["kubernetes-version"]))


@pytest.mark.parametrize(
    ("ha", "choice", "layered", "detail"),
    [
        pytest.param(True, "target", True, "HA: values-ha.yaml of linkerd-control-plane 1.16.11 applied", id="HA"),
        pytest.param(True, "keep", False, "HA: values-ha.yaml kept as installed", id="HA with haValues keep"),
        pytest.param(False, "target", False, "", id="not HA"),
    ],
)
def test_the_plan_says_whose_values_ha_yaml_a_control_plane_step_applies(
    ha: bool, choice: str, layered: bool, detail: str
) -> None:
    """The control-plane step carries the HA decision and its detail names the chart whose file is applied."""
    spec = Spec.model_validate({"waivers": ["kubernetes-version"], "values": {"haValues": choice}})
    plan = _ha_plan("stable-2.13.7", "stable-2.14.10", ha=ha, spec=spec)
    step = control_plane_step(plan.hops[0])
    assert step is not None
    assert step.ha_values is layered
    assert detail in step.detail
    assert ("HA:" in step.detail) is ha
    assert Plan.from_json(plan.as_json()) == plan, "a stored plan keeps the decision"


def _layers(plan: Plan, spec: Spec, installed: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    return ha_layers(plan.hops[0], spec, ("linkerd-control-plane", installed), lambda c, v: HA_FILES.get(v))


def test_keep_sends_the_old_behaviour_without_the_target_file() -> None:
    """values.haValues: keep: the release keeps the old file's settings; highAvailability never arrives."""
    spec = Spec.model_validate({"waivers": ["kubernetes-version"], "values": {"haValues": "keep"}})
    plan = _ha_plan("stable-2.13.7", "stable-2.14.10", spec=spec)
    target, installed = _layers(plan, spec, "1.12.7")
    assert (target, installed) == (None, None)
    user = _installed_ha({})
    out = hop_values(
        plan.hops[0], spec, CAT, user_values=user, target_defaults={}, ha_target=_ha(HA_2_14), ha_installed=user
    )
    assert out.values == user
    assert "highAvailability" not in out.values
    assert "policyControllerResources" not in out.values


def test_a_rollback_hop_applies_the_older_charts_values_ha_yaml() -> None:
    """2.14 -> 2.13: the 2.14 file's settings go, the 2.13 file's come: what a fresh 2.13 HA install holds."""
    spec = Spec(waivers=["kubernetes-version"])
    plan = _ha_plan("stable-2.14.10", "stable-2.13.7", spec=spec)
    assert plan.hops[0].kind == "rollback"
    target, installed = _layers(plan, spec, "1.16.11")
    assert (target, installed) == (_ha(HA_2_13), _ha(HA_2_14))
    upgraded = deep_merge(deep_merge(_ha(HA_2_14), IDENTITY), {"controllerReplicas": 5})
    out = hop_values(
        plan.hops[0], spec, CAT, user_values=upgraded, target_defaults={}, ha_target=target, ha_installed=installed
    )
    assert out.values == _installed_ha({"controllerReplicas": 5})
    assert "highAvailability" not in out.values


@dataclass
class _Helm:
    """The helm calls preflight's value rendering makes."""

    installed: str = "1.12.7"
    reads: list[tuple[str, str, str]] = field(default_factory=list)
    failed_after: str | None = None  # a later revision of this chart that failed (an earlier attempt)

    def show_values(self, chart: str, version: str) -> dict[str, Any]:
        return {"linkerdVersion": "stable-2.14.10"}

    def history(self, release: str, namespace: str) -> list[HelmRevision]:
        rows = [HelmRevision(1, "deployed", f"linkerd-control-plane-{self.installed}", "", "")]
        if self.failed_after:
            rows = [replace(rows[0], status="superseded")]
            rows.append(HelmRevision(2, "failed", f"linkerd-control-plane-{self.failed_after}", "", ""))
        return rows

    def chart_file(self, chart: str, version: str, name: str) -> str | None:
        self.reads.append((chart, version, name))
        return HA_FILES.get(version)


def test_preflight_renders_the_same_layered_values() -> None:
    """values.render checks what apply will send: the target file read from the repository, the old one taken out."""
    spec = Spec(waivers=["kubernetes-version"])
    plan = _ha_plan("stable-2.13.7", "stable-2.14.10", spec=spec)
    helm = _Helm()
    send = values_sender(Session(spec, CAT, plan, helm=helm), plan, "linkerd")
    assert send is not None
    effective = send(_installed_ha({"controllerReplicas": 5}))
    assert effective["highAvailability"] is True
    assert effective["controllerReplicas"] == 5
    assert effective["linkerdVersion"] == "stable-2.14.10"
    assert set(helm.reads) == {
        ("linkerd/linkerd-control-plane", "1.16.11", "values-ha.yaml"),
        ("linkerd/linkerd-control-plane", "1.12.7", "values-ha.yaml"),
    }


def test_preflight_takes_out_the_values_ha_yaml_of_the_last_deployed_revisions_chart() -> None:
    """Revision 2 (chart 1.16.11) failed: the carried values are revision 1's, so 1.12.7's file is taken out."""
    spec = Spec(waivers=["kubernetes-version"])
    plan = _ha_plan("stable-2.13.7", "stable-2.14.10", spec=spec)
    helm = _Helm(failed_after="1.16.11")
    send = values_sender(Session(spec, CAT, plan, helm=helm), plan, "linkerd")
    assert send is not None
    effective = send(_installed_ha({}))
    assert ("linkerd/linkerd-control-plane", "1.12.7", "values-ha.yaml") in helm.reads
    assert effective["highAvailability"] is True


@dataclass
class _HaCluster(FakeCluster):
    """The executor's fake cluster whose control plane was installed HA from 2.13's values-ha.yaml."""

    ha_stored: dict[str, Any] = field(default_factory=dict)  # the control plane's user values
    ha_sent: list[dict[str, Any]] = field(default_factory=list)  # what each control-plane upgrade sent

    def user_values(self, name: str, namespace: str, revision: int | None = None) -> dict[str, Any]:
        return self.ha_stored

    def all_values(self, name: str, namespace: str) -> dict[str, Any]:
        return deep_merge(self.ha_stored, {"linkerdVersion": self.version})

    def chart_file(self, chart: str, version: str, name: str) -> str | None:
        assert chart.startswith("linkerd/"), chart
        assert name == "values-ha.yaml", name
        return HA_FILES.get(version)

    def upgrade(
        self,
        name: str,
        chart: str,
        namespace: str,
        values: dict[str, Any],
        *,
        version: str,
        reset_values: bool,
        reuse_values: bool,
    ) -> HelmRelease:
        after = super().upgrade(
            name, chart, namespace, values, version=version, reset_values=reset_values, reuse_values=reuse_values
        )
        if name == "linkerd-control-plane":
            self.ha_sent.append(values)
            self.ha_stored = values
        return after


def test_an_ha_apply_sends_the_target_file_and_records_it_in_the_checkpoint() -> None:
    """apply 2.13.7 -> 2.14.10 HA: the sent values gain highAvailability; the checkpoint's diff and the log say so."""
    own = {"identityTrustAnchorsPEM": "A", "identity": {"issuer": {"tls": {"crtPEM": "C", "keyPEM": "K"}}}}
    cluster = _HaCluster("stable-2.13.7")
    cluster.ha_stored = deep_merge(_ha(HA_2_13), own)
    plan = _ha_plan("stable-2.13.7", "stable-2.14.10")
    store = MemoryStore()
    checkpoint = Checkpoint.new("run-1", plan.as_json(), NOW)
    executor = Executor(plan, Spec(), CAT, cluster, store, checkpoint, clock=lambda: cluster.now, sleep=cluster.sleep)
    with capture_logs() as logs:
        executor.run()
    assert checkpoint.state == RunState.DONE
    assert cluster.ha_sent == [deep_merge(_ha(HA_2_14), own)]
    diffs = checkpoint.values_diffs["0/linkerd-control-plane"]
    assert {"key": "highAvailability", "old": None, "new": True} in diffs
    event = next(e for e in logs if e["event"] == "values")
    assert event["ha_values"] == "target"
    assert event["ha_taken_out"] > 0


def test_an_ha_apply_after_a_failed_revision_takes_out_the_last_deployed_charts_file() -> None:
    """Revision 2 failed at the target chart: revision 1's values are carried, so 1.12.7's file is taken out."""
    target_file = HA_2_13.replace("enablePodAntiAffinity: true\n", "") + "highAvailability: true\n"  # drops a key

    class Cluster(_HaCluster):
        def chart_file(self, chart: str, version: str, name: str) -> str | None:
            return {"1.12.7": HA_2_13, "1.16.11": target_file}.get(version)

    own = {"identityTrustAnchorsPEM": "A", "identity": {"issuer": {"tls": {"crtPEM": "C", "keyPEM": "K"}}}}
    cluster = Cluster("stable-2.13.7")
    cluster.ha_stored = deep_merge(_ha(HA_2_13), own)  # revision 1, deployed with chart 1.12.7
    cp = cluster.releases["linkerd-control-plane"]
    cluster.past["linkerd-control-plane"] = [HelmRevision(1, "superseded", "linkerd-control-plane-1.12.7", "", "")]
    cluster.releases["linkerd-control-plane"] = replace(cp, revision=2, status="failed", chart_version="1.16.11")
    plan = _ha_plan("stable-2.13.7", "stable-2.14.10")
    checkpoint = Checkpoint.new("run-1", plan.as_json(), NOW)
    Executor(
        plan, Spec(), CAT, cluster, MemoryStore(), checkpoint, clock=lambda: cluster.now, sleep=cluster.sleep
    ).run()
    assert checkpoint.state == RunState.DONE
    assert "enablePodAntiAffinity" not in cluster.ha_sent[0], "the installed file's setting travelled as a user value"
    assert cluster.ha_sent[0] == deep_merge(_ha(target_file), own)


@pytest.mark.parametrize(
    ("current", "target", "kind", "chart"),
    [
        pytest.param("stable-2.11.5", "stable-2.12.6", "chart-split", "linkerd-control-plane", id="the 2.12 split"),
        pytest.param("stable-2.10.2", "stable-2.11.5", "linkerd2-upgrade", "linkerd2", id="a linkerd2 upgrade"),
        pytest.param("stable-2.14.10", "stable-2.13.7", "rollback", "linkerd-control-plane", id="a rollback"),
    ],
)
def test_every_hop_kind_that_sends_values_layers_the_target_file(
    current: str, target: str, kind: str, chart: str
) -> None:
    """The split installs, linkerd2 upgrades and rollbacks of an HA installation apply their target chart's file."""
    spec = Spec(waivers=["kubernetes-version"], acknowledge=["chart-split-2.12"])
    plan = _ha_plan(current, target, spec=spec)
    assert plan.refused is None, plan.refused
    hop = plan.hops[-1]
    step = control_plane_step(hop)
    assert hop.kind == kind
    assert step is not None
    assert step.ha_values is True
    assert f"HA: values-ha.yaml of {chart} {step.chart_version} applied under your values" in step.detail
