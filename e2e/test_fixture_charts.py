"""The fixture Linkerd charts, rendered and linted offline with the real helm binaries (no cluster)."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.fixtures.charts import (
    FOREIGN_GATEWAY_API_CHART,
    FOREIGN_GATEWAY_API_VERSION,
    PROXY_INIT_VERSION,
    build_charts,
    chart_source,
    foreign_gateway_api_source,
    kube_version,
)
from e2e.fixtures.identity import Identity, make_identity
from e2e.fixtures.releases import LINKERD2_RELEASES, RELEASES, SPLIT_RELEASES, FixtureRelease, release
from e2e.fixtures.world import issuer_expiry
from e2e.harness import binaries

try:  # libyaml's safe loader parses a rendered control plane ten times faster
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

CP = "linkerd-control-plane"
CRDS = "linkerd-crds"
VIZ = "linkerd-viz"
JAEGER = "linkerd-jaeger"
L2 = "linkerd2"
DEPLOYMENTS = {
    "linkerd-destination": "destination",
    "linkerd-identity": "identity",
    "linkerd-proxy-injector": "proxy-injector",
}
WEBHOOKS = {
    "linkerd-proxy-injector-webhook-config": ("linkerd-proxy-injector", "/inject"),
    "linkerd-sp-validator-webhook-config": ("linkerd-sp-validator", "/validate-sp"),
    "linkerd-policy-validator-webhook-config": ("linkerd-policy-validator", "/validate-policy"),
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
PDBS = {"linkerd-dst", "linkerd-identity", "linkerd-proxy-injector"}
# The split charts (2.12 on) and the linkerd2 chart (2.10, 2.11) are tested apart.
BY_RELEASE = pytest.mark.parametrize("rel", SPLIT_RELEASES, ids=[r.version for r in SPLIT_RELEASES])
BY_LINKERD2 = pytest.mark.parametrize("rel", LINKERD2_RELEASES, ids=[r.version for r in LINKERD2_RELEASES])
ALL_RELEASES = pytest.mark.parametrize("rel", RELEASES, ids=[r.version for r in RELEASES])


@dataclass(frozen=True)
class Built:
    """The charts built once for this module, and the certificates to render them with."""

    out: Path
    packages: list[Path]
    identity: Identity
    certs: Path
    certs_with_expiry: Path  # plus identity.issuer.crtExpiry, which 2.10 requires

    def src(self, rel: FixtureRelease, chart: str = CP) -> Path:
        return chart_source(rel, chart, self.out)

    def certs_for(self, rel: FixtureRelease) -> Path:
        return self.certs_with_expiry if rel.major <= 10 else self.certs


@dataclass(frozen=True)
class Rendered:
    """The output of one `helm template`."""

    text: str
    docs: list[dict[str, Any]]

    def all(self, kind: str) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.docs if d["kind"] == kind}

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.all(kind)[name]


Render = Callable[..., Rendered]


def _load_all(text: str) -> list[dict[str, Any]]:
    """yaml.safe_load_all, with libyaml when available; empty documents dropped."""
    return [d for d in yaml.load_all(text, Loader=_SafeLoader) if d]


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def helm4() -> Path:
    """helm v4, the default binary."""
    binaries.ensure(binaries.COMPONENTS["helm"])
    return binaries.program("helm", "helm")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, helm4: Path) -> Built:
    """Every release's charts, built and packaged once for the module."""
    out = tmp_path_factory.mktemp("fixture-charts")
    packages = build_charts(out, helm4)
    identity = make_identity()
    certs = out / "certs.yaml"
    certs.write_text(yaml.safe_dump(identity.values()))
    with_expiry = identity.values()
    with_expiry["identity"]["issuer"]["crtExpiry"] = issuer_expiry(identity.issuer_crt_pem)
    certs_with_expiry = out / "certs-with-expiry.yaml"
    certs_with_expiry.write_text(yaml.safe_dump(with_expiry))
    return Built(out, packages, identity, certs, certs_with_expiry)


@pytest.fixture(scope="module")
def render(built: Built, helm4: Path) -> Render:
    """`helm template` of one chart of one release; successful renders are cached per arguments."""
    cache: dict[tuple[Any, ...], Rendered] = {}

    def run(
        rel: FixtureRelease,
        *args: str,
        chart: str = CP,
        helm: Path | None = None,
        namespace: str = "linkerd",
        certs: bool = True,
    ) -> Rendered:
        key = (rel.version, chart, args, helm, namespace, certs)
        if key not in cache:
            extra = ["-f", str(built.certs_for(rel))] if certs and chart in (CP, L2) else []
            proc = _helm(helm or helm4, "template", chart, str(built.src(rel, chart)), "-n", namespace, *extra, *args)
            assert proc.returncode == 0, proc.stderr
            cache[key] = Rendered(proc.stdout, _load_all(proc.stdout))
        return cache[key]

    return run


def _fail(helm: Path, chart_dir: Path, *args: str) -> str:
    proc = _helm(helm, "template", CP, str(chart_dir), "-n", "linkerd", *args)
    assert proc.returncode != 0, f"rendering unexpectedly succeeded with {args}"
    return proc.stderr


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(workload["spec"]["template"]["spec"])


def _containers(workload: dict[str, Any], key: str = "containers") -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _pod_spec(workload).get(key, [])}


def _config_values(out: Rendered) -> dict[str, Any]:
    values = yaml.safe_load(out.get("ConfigMap", "linkerd-config")["data"]["values"])
    assert isinstance(values, dict)
    return values


def _anchors_only(built: Built) -> str:
    path = built.out / "anchors-only.yaml"
    path.write_text(yaml.safe_dump({"identityTrustAnchorsPEM": built.identity.trust_anchor_pem}))
    return str(path)


# --- build_charts and packaging ---------------------------------------------------------------


def test_build_charts_packages_each_distinct_chart_version_once(built: Built) -> None:
    """build_charts returns one sorted .tgz per distinct (chart, version), named as the real packages."""
    expected = {f"{chart}-{version}.tgz" for r in RELEASES for chart, version in r.charts.items()}
    expected.add(f"{FOREIGN_GATEWAY_API_CHART}-{FOREIGN_GATEWAY_API_VERSION}.tgz")
    names = [p.name for p in built.packages]
    assert names == sorted(names)
    assert set(names) == expected
    # crds 1.6.1 and 1.8.0 are shared; jaeger for 2.14-2.18; the foreign Gateway API chart.
    assert len(names) == len(expected) == 40
    for name in (
        "linkerd-control-plane-1.16.11.tgz",
        "linkerd-crds-2024.8.2.tgz",
        "linkerd-control-plane-2026.6.3.tgz",
        "linkerd-viz-30.12.11.tgz",
        "linkerd-viz-30.14.10-edge.tgz",
        "linkerd-jaeger-2025.4.4.tgz",
        "gateway-api-crds-1.2.1.tgz",
        "linkerd2-2.10.2.tgz",
        "linkerd2-2.11.5.tgz",
    ):
        assert (built.out / name).is_file()


def test_build_charts_is_idempotent(built: Built, helm4: Path) -> None:
    """Rebuilding into the same folder returns the same packages and leaves no temporary folders."""
    again = build_charts(built.out, helm4)
    assert again == built.packages
    leftovers = [p.name for p in (built.out / "src").iterdir() if p.is_dir() and p.name.startswith(".")]
    assert leftovers == []


def test_chart_source_builds_missing_dirs_and_reuses_current_ones(tmp_path: Path) -> None:
    """chart_source writes a missing chart folder once and returns it unchanged when it is current."""
    rel = release("stable-2.14.10")
    first = chart_source(rel, CP, tmp_path)
    assert first == tmp_path / "src" / "linkerd-control-plane-1.16.11"
    chart_yaml = first / "Chart.yaml"
    mtime = chart_yaml.stat().st_mtime_ns
    assert chart_source(rel, CP, tmp_path) == first
    assert chart_yaml.stat().st_mtime_ns == mtime
    tpl = (first / "templates" / "_fixture.tpl").read_text()
    assert '"fixture.major" -}}14{{' in tpl
    assert '"fixture.release" -}}stable-2.14.10{{' in tpl


def test_shared_crds_chart_is_built_from_its_first_release(built: Built) -> None:
    """A crds chart shared by two releases is one folder, whatever release asks for it."""
    a, b = release("stable-2.14.9"), release("stable-2.14.10")
    assert built.src(a, CRDS) == built.src(b, CRDS) == built.out / "src" / "linkerd-crds-1.8.0"
    assert "stable-2.14.9" in (built.src(b, CRDS) / "templates" / "_fixture.tpl").read_text()


@ALL_RELEASES
def test_helm_show_chart_reports_release_versions(built: Built, helm_binary: Path, rel: FixtureRelease) -> None:
    """`helm show chart` on each package reports the version and appVersion from RELEASES (crds: none);
    linkerd2 is a v1 chart, stable-2.11.5's published deprecated."""
    # Chart.yaml kubeVersion at the tags (2.15: edge-24.2.4 ... 2.20: edge-26.6.3).
    floors = {10: "1.16", 11: "1.17", 12: "1.21", 13: "1.21", 14: "1.21", 15: "1.22", 16: "1.22", 17: "1.22"}
    floors |= {18: "1.23", 19: "1.23", 20: "1.31"}
    expected_kube = f">={floors[rel.major]}.0-0"
    assert kube_version(rel.major) == expected_kube
    expected_charts = {L2} if rel.major <= 11 else {CP, CRDS, VIZ}
    if 14 <= rel.major <= 18:
        expected_charts.add(JAEGER)
    assert set(rel.charts) == expected_charts
    for chart, version in rel.charts.items():
        proc = _helm(helm_binary, "show", "chart", str(built.out / f"{chart}-{version}.tgz"))
        assert proc.returncode == 0, proc.stderr
        meta = yaml.safe_load(proc.stdout)
        legacy = chart in (L2, JAEGER)  # apiVersion v1 charts, as Linkerd's
        assert (meta["apiVersion"], meta["name"], meta["version"]) == ("v1" if legacy else "v2", chart, version)
        assert meta["kubeVersion"] == expected_kube
        assert meta["home"] == "https://linkerd.io"
        assert meta.get("type") == (None if legacy else "application")
        assert meta.get("deprecated", False) == (rel.version == "stable-2.11.5")
        if chart == CRDS:
            assert "appVersion" not in meta
        else:
            assert meta["appVersion"] == rel.version


# --- linkerd-control-plane: default render ----------------------------------------------------


@BY_RELEASE
def test_control_plane_renders_meshed_deployments_tagged_with_the_release(
    render: Render, built: Built, helm_binary: Path, rel: FixtureRelease
) -> None:
    """With certificates, the three Deployments render meshed, with images, labels and annotations of the tag."""
    out = render(rel, helm=helm_binary)
    tag, ns = rel.version, "linkerd"
    deployments = out.all("Deployment")
    assert set(deployments) == set(DEPLOYMENTS)
    for name, component in DEPLOYMENTS.items():
        dep = deployments[name]
        assert dep["metadata"]["namespace"] == ns
        assert dep["spec"]["replicas"] == 1
        labels = dep["metadata"]["labels"]
        assert labels["linkerd.io/control-plane-component"] == component
        assert labels["linkerd.io/control-plane-ns"] == ns
        assert labels["app.kubernetes.io/name"] == component
        assert labels["app.kubernetes.io/part-of"] == "Linkerd"
        assert labels["app.kubernetes.io/version"] == tag
        assert dep["metadata"]["annotations"]["linkerd.io/created-by"] == f"linkerd/helm {tag}"
        pod = dep["spec"]["template"]["metadata"]
        assert pod["labels"]["linkerd.io/control-plane-component"] == component
        assert pod["labels"]["linkerd.io/workload-ns"] == ns
        assert pod["labels"]["linkerd.io/proxy-deployment"] == name
        assert pod["labels"]["app.kubernetes.io/version"] == tag
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["labels"].items()
        assert pod["annotations"]["linkerd.io/created-by"] == f"linkerd/helm {tag}"
        assert pod["annotations"]["linkerd.io/proxy-version"] == tag
        assert pod["annotations"]["linkerd.io/trust-root-sha256"] == built.identity.trust_root_sha256
        assert pod["annotations"]["linkerd.io/identity-mode"] == "default"
        assert pod["annotations"]["config.linkerd.io/default-inbound-policy"] == "all-unauthenticated"
        spec = _pod_spec(dep)
        assert spec["serviceAccountName"] == name
        assert "affinity" not in spec
        containers, inits = _containers(dep), _containers(dep, "initContainers")
        # 2.20 defaults to native sidecars, except for the identity pod (as Linkerd's chart).
        native = rel.major >= 20 and name != "linkerd-identity"
        proxy = inits["linkerd-proxy"] if native else containers["linkerd-proxy"]
        assert proxy["image"] == f"cr.l5d.io/linkerd/proxy:{tag}"
        assert proxy.get("restartPolicy") == ("Always" if native else None)
        assert list(inits) == (["linkerd-init", "linkerd-proxy"] if native else ["linkerd-init"])
        assert ("linkerd-proxy" in containers) == (not native)
        init = inits["linkerd-init"]
        if rel.major >= 20:  # proxyInit.image removed: linkerd-init runs the proxy image
            assert init["image"] == f"cr.l5d.io/linkerd/proxy:{tag}"
            assert init["command"] == ["/usr/lib/linkerd/linkerd2-proxy-init"]
        else:
            assert init["image"] == f"cr.l5d.io/linkerd/proxy-init:{PROXY_INIT_VERSION[rel.major]}"
        # proxyInit.iptablesMode: legacy up to 2.18, nft from 2.19.
        assert ("iptables-nft" in init["args"]) == (rel.major >= 19)
    controller = f"cr.l5d.io/linkerd/controller:{tag}"
    images = {n: c["image"] for n, c in _containers(deployments["linkerd-destination"]).items()}
    proxies = {"linkerd-proxy": f"cr.l5d.io/linkerd/proxy:{tag}"} if rel.major < 20 else {}
    assert images == {
        **proxies,
        "destination": controller,
        "sp-validator": controller,
        # 2.19 removed policyController.image: the policy controller runs the controller image.
        "policy": controller if rel.major >= 19 else f"cr.l5d.io/linkerd/policy-controller:{tag}",
    }
    assert _containers(deployments["linkerd-identity"])["identity"]["image"] == controller
    assert _containers(deployments["linkerd-proxy-injector"])["proxy-injector"]["image"] == controller


@BY_RELEASE
def test_linkerd_config_holds_values_without_secrets(render: Render, built: Built, rel: FixtureRelease) -> None:
    """linkerd-config's values parse as YAML with the effective linkerdVersion and no key, certificate or e2e block."""
    out = render(rel)
    values = _config_values(out)
    assert values["linkerdVersion"] == rel.version
    assert "highAvailability" not in values  # no chart default: only values-ha.yaml sets it (from 2.14)
    assert values["webhookFailurePolicy"] == "Ignore"
    assert values["proxy"]["image"] == {"name": "cr.l5d.io/linkerd/proxy", "version": "", "pullPolicy": ""}
    assert values["identityTrustAnchorsPEM"] == built.identity.trust_anchor_pem
    assert values["identity"]["issuer"]["tls"] == {}
    assert "e2e" not in values
    raw = out.get("ConfigMap", "linkerd-config")["data"]["values"]
    assert "keyPEM" not in raw
    assert "crtPEM" not in raw
    # The private key is only in the issuer Secret, base64-encoded.
    assert "PRIVATE KEY" not in out.text
    secret = out.get("Secret", "linkerd-identity-issuer")
    key_b64 = secret["data"]["key.pem"]
    assert base64.b64decode(key_b64).decode() == built.identity.issuer_key_pem.strip()
    assert base64.b64decode(secret["data"]["crt.pem"]).decode() == built.identity.issuer_crt_pem.strip()
    assert out.text.count(key_b64) == 1


@BY_RELEASE
def test_effective_linkerd_version_defaults_to_app_version(render: Render, rel: FixtureRelease) -> None:
    """An empty linkerdVersion falls back to the chart's appVersion in images and linkerd-config."""
    out = render(rel, "--set", "linkerdVersion=")
    assert _config_values(out)["linkerdVersion"] == rel.version
    dep = out.get("Deployment", "linkerd-identity")
    assert _containers(dep)["identity"]["image"] == f"cr.l5d.io/linkerd/controller:{rel.version}"


@BY_RELEASE
def test_control_plane_renders_trust_roots_services_accounts_and_heartbeat(render: Render, rel: FixtureRelease) -> None:
    """Trust roots, Services, a ServiceAccount per pod, the heartbeat CronJob and created-by on every object render."""
    out = render(rel)
    anchors = out.get("ConfigMap", "linkerd-identity-trust-roots")["data"]["ca-bundle.crt"]
    assert anchors.startswith("-----BEGIN CERTIFICATE-----")
    assert set(out.all("Service")) == {
        "linkerd-dst",
        "linkerd-dst-headless",
        "linkerd-policy",
        "linkerd-identity",
        "linkerd-identity-headless",
        "linkerd-proxy-injector",
        "linkerd-sp-validator",
        "linkerd-policy-validator",
    }
    heartbeat = out.get("CronJob", "linkerd-heartbeat")
    assert heartbeat["metadata"]["labels"]["linkerd.io/control-plane-component"] == "heartbeat"
    assert heartbeat["spec"]["schedule"] == "1 * * * *"
    assert _containers(heartbeat)["heartbeat"]["image"] == f"cr.l5d.io/linkerd/controller:{rel.version}"
    accounts = set(out.all("ServiceAccount"))
    assert accounts == {"linkerd-destination", "linkerd-identity", "linkerd-proxy-injector", "linkerd-heartbeat"}
    workloads = [*out.all("Deployment").values(), heartbeat]
    assert {_pod_spec(w)["serviceAccountName"] for w in workloads} == accounts
    for doc in out.docs:
        assert doc["metadata"]["annotations"]["linkerd.io/created-by"] == f"linkerd/helm {rel.version}", doc["kind"]
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == "linkerd", (doc["kind"], doc["metadata"]["name"])
    assert "CronJob" not in {d["kind"] for d in render(rel, "--set", "disableHeartBeat=true").docs}


@BY_RELEASE
def test_webhooks_reference_services_by_default(render: Render, rel: FixtureRelease) -> None:
    """The three webhook configurations call their Services, with Ignore, a 10 s timeout and the namespace selector."""
    out = render(rel)
    hooks = out.all("MutatingWebhookConfiguration") | out.all("ValidatingWebhookConfiguration")
    assert set(hooks) == set(WEBHOOKS)
    for name, (service, _path) in WEBHOOKS.items():
        (hook,) = hooks[name]["webhooks"]
        assert hook["clientConfig"] == {"service": {"name": service, "namespace": "linkerd", "path": "/"}}
        assert hook["failurePolicy"] == "Ignore"
        assert hook["timeoutSeconds"] == 10
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
        assert hook["namespaceSelector"]["matchExpressions"] == [
            {"key": "config.linkerd.io/admission-webhooks", "operator": "NotIn", "values": ["disabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "cert-manager"]},
        ]
    (injector,) = hooks["linkerd-proxy-injector-webhook-config"]["webhooks"]
    assert injector["name"] == "linkerd-proxy-injector.linkerd.io"
    assert injector["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods", "services"],
            "scope": "Namespaced",
        }
    ]
    (sp,) = hooks["linkerd-sp-validator-webhook-config"]["webhooks"]
    assert sp["rules"][0]["resources"] == ["serviceprofiles"]
    assert sp["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    (policy,) = hooks["linkerd-policy-validator-webhook-config"]["webhooks"]
    assert policy["rules"][0]["apiGroups"] == ["policy.linkerd.io"]
    assert policy["rules"][0]["operations"] == ["CREATE", "UPDATE"]


# --- required values and identity schemes -----------------------------------------------------


@BY_RELEASE
@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("nothing", "Please provide the identity trust anchors"),
        ("anchors", "Please provide the identity issuer certificate"),
        ("anchors+crt", "Please provide the identity issue private key"),  # sic, Linkerd's message
    ],
)
def test_missing_certificates_fail_with_linkerd_messages(
    built: Built, helm4: Path, rel: FixtureRelease, given: str, message: str
) -> None:
    """Rendering without the trust anchors, issuer certificate or issuer key fails with Linkerd's message."""
    args: list[str] = []
    if given != "nothing":
        args += ["-f", _anchors_only(built)]
    if given == "anchors+crt":
        args += ["--set-string", f"identity.issuer.tls.crtPEM={built.identity.issuer_crt_pem}"]
    assert message in _fail(helm4, built.src(rel), *args)


@BY_RELEASE
def test_kubernetes_tls_scheme_renders_no_issuer_secret(built: Built, render: Render, rel: FixtureRelease) -> None:
    """With scheme kubernetes.io/tls no issuer key is needed and the chart renders no linkerd-identity-issuer Secret."""
    out = render(rel, "-f", _anchors_only(built), "--set", "identity.issuer.scheme=kubernetes.io/tls", certs=False)
    assert "linkerd-identity-issuer" not in out.all("Secret")
    identity = out.get("Deployment", "linkerd-identity")
    assert "-identity-scheme=kubernetes.io/tls" in _containers(identity)["identity"]["args"]
    volumes = {v["name"]: v for v in _pod_spec(identity)["volumes"]}
    assert volumes["identity-issuer"]["secret"]["secretName"] == "linkerd-identity-issuer"


@BY_RELEASE
def test_external_ca_renders_no_trust_roots_config_map(render: Render, rel: FixtureRelease) -> None:
    """identity.externalCA leaves linkerd-identity-trust-roots to be supplied from outside."""
    out = render(rel, "--set", "identity.externalCA=true")
    assert "linkerd-identity-trust-roots" not in out.all("ConfigMap")
    assert "linkerd-config" in out.all("ConfigMap")


# --- high availability and the per-major values traps -----------------------------------------


@BY_RELEASE
def test_values_ha_gives_three_spread_replicas_pdbs_and_fail_policy(
    render: Render, built: Built, helm_binary: Path, rel: FixtureRelease
) -> None:
    """values-ha.yaml gives 3 replicas, required hostname anti-affinity, three PDBs and failurePolicy Fail."""
    out = render(rel, "-f", str(built.src(rel) / "values-ha.yaml"), helm=helm_binary)
    for name, component in DEPLOYMENTS.items():
        dep = out.get("Deployment", name)
        assert dep["spec"]["replicas"] == 3
        (required,) = _pod_spec(dep)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert required["topologyKey"] == "kubernetes.io/hostname"
        assert required["labelSelector"]["matchExpressions"] == [
            {"key": "linkerd.io/control-plane-component", "operator": "In", "values": [component]}
        ]
    pdbs = out.all("PodDisruptionBudget")
    assert set(pdbs) == PDBS
    assert {p["spec"]["maxUnavailable"] for p in pdbs.values()} == {1}
    assert all(p["apiVersion"] == "policy/v1" for p in pdbs.values())
    hooks = out.all("MutatingWebhookConfiguration") | out.all("ValidatingWebhookConfiguration")
    assert {h["webhooks"][0]["failurePolicy"] for h in hooks.values()} == {"Fail"}
    values = _config_values(out)
    # 2.12 and 2.13's values-ha.yaml had no highAvailability flag; 2.14 added it with policyControllerResources
    assert values.get("highAvailability") is (True if rel.major >= 14 else None)
    assert ("policyControllerResources" in values) is (rel.major in (14, 15))
    assert values["controllerReplicas"] == 3
    assert "PodDisruptionBudget" not in {d["kind"] for d in render(rel).docs}


@BY_RELEASE
def test_pdb_max_unavailable_is_a_value_only_from_2_16(render: Render, built: Built, rel: FixtureRelease) -> None:
    """controller.podDisruptionBudget.maxUnavailable sets the PDBs in 2.16; earlier majors keep a fixed 1."""
    ha = str(built.src(rel) / "values-ha.yaml")
    out = render(rel, "-f", ha, "--set", "controller.podDisruptionBudget.maxUnavailable=2")
    expected = 2 if rel.major >= 16 else 1
    assert {p["spec"]["maxUnavailable"] for p in out.all("PodDisruptionBudget").values()} == {expected}


def test_reuse_values_from_2_15_breaks_the_2_16_ha_render(built: Built, helm_binary: Path, tmp_path: Path) -> None:
    """The 2.16 chart fed 2.15's defaults (as --reuse-values does) fails in HA on controller.podDisruptionBudget."""
    old, new = release("edge-24.2.4"), release("edge-24.8.2")
    assert (old.major, new.major) == (15, 16)
    trapped = tmp_path / "linkerd-control-plane"
    shutil.copytree(built.src(new), trapped)
    shutil.copy(built.src(old) / "values.yaml", trapped / "values.yaml")
    certs, ha = str(built.certs), str(built.src(old) / "values-ha.yaml")
    stderr = _fail(helm_binary, trapped, "-f", certs, "-f", ha)
    assert "nil pointer" in stderr
    assert "podDisruptionBudget" in stderr
    # Outside HA there is no PDB, so the stale values render; and 2.16's own values render in HA.
    for chart_dir in (trapped, built.src(new)):
        args = ["-f", certs] if chart_dir == trapped else ["-f", certs, "-f", ha]
        proc = _helm(helm_binary, "template", CP, str(chart_dir), "-n", "linkerd", *args)
        assert proc.returncode == 0, proc.stderr


@BY_RELEASE
def test_values_keys_differ_per_major(built: Built, rel: FixtureRelease) -> None:
    """As the real values.yaml at each tag: proxyInit.resources up to 2.15; proxy.nativeSidecar from 2.15
    (true from 2.20); controller from 2.16; controlPlaneTracing* up to 2.18, controller.tracing and
    proxy.tracing from 2.19; policyController.image up to 2.18; proxyInit.image up to 2.19;
    proxyInit.iptablesMode legacy up to 2.18, nft from 2.19."""
    values = yaml.safe_load((built.src(rel) / "values.yaml").read_text())
    major = rel.major
    assert ("resources" in values["proxyInit"]) == (major <= 15)
    assert values["proxy"].get("nativeSidecar") == (None if major < 15 else major >= 20)
    assert ("controller" in values) == (major >= 16)
    if major >= 16:
        tracing = {"tracing": {"enabled": False, "collector": {"endpoint": ""}}} if major >= 19 else {}
        assert values["controller"] == {"podDisruptionBudget": {"maxUnavailable": 1}, **tracing}
    assert ("controlPlaneTracing" in values) == ("controlPlaneTracingNamespace" in values) == (major <= 18)
    assert ("tracing" in values["proxy"]) == (major >= 19)
    assert "trace" not in values["proxy"]
    assert ("image" in values["policyController"]) == (major <= 18)
    assert values["proxyInit"]["iptablesMode"] == ("nft" if major >= 19 else "legacy")
    assert values["linkerdVersion"] == rel.version
    if major >= 20:
        assert "image" not in values["proxyInit"]
    else:
        assert values["proxyInit"]["image"]["version"] == PROXY_INIT_VERSION[major]
    assert values["proxy"]["defaultInboundPolicy"] == "all-unauthenticated"
    assert "defaultAllowPolicy" not in values["policyController"]
    assert values["installMethod"] == "helm"
    assert values["e2e"] == {"webhookURL": "", "webhookCABundle": ""}


@BY_RELEASE
def test_proxy_init_resources_reach_linkerd_init_only_up_to_2_15(render: Render, rel: FixtureRelease) -> None:
    """proxyInit.resources sets linkerd-init's resources up to 2.15; 2.16's templates no longer read it."""
    out = render(rel, "--set", "proxyInit.resources.cpu.limit=100m")
    init = _containers(out.get("Deployment", "linkerd-identity"), "initContainers")["linkerd-init"]
    if rel.major <= 15:
        assert init["resources"] == {"limits": {"cpu": "100m"}}
    else:
        assert "resources" not in init


@BY_RELEASE
def test_native_sidecar_moves_the_proxy_to_init_containers_from_2_15(render: Render, rel: FixtureRelease) -> None:
    """proxy.nativeSidecar=true makes linkerd-proxy an always-restarting init container from 2.15 on."""
    dep = render(rel, "--set", "proxy.nativeSidecar=true").get("Deployment", "linkerd-destination")
    inits, containers = _containers(dep, "initContainers"), _containers(dep)
    if rel.major >= 15:
        assert list(inits) == ["linkerd-init", "linkerd-proxy"]
        assert inits["linkerd-proxy"]["restartPolicy"] == "Always"
        assert "linkerd-proxy" not in containers
    else:
        assert list(inits) == ["linkerd-init"]
        assert "restartPolicy" not in containers["linkerd-proxy"]


# --- fixture-only switches --------------------------------------------------------------------


@BY_RELEASE
def test_e2e_webhook_url_registers_the_webhooks_by_url(render: Render, rel: FixtureRelease) -> None:
    """e2e.webhookURL sends all three webhooks to <url><path> with the given caBundle, kept out of linkerd-config."""
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n").decode()
    out = render(rel, "--set", "e2e.webhookURL=https://127.0.0.1:8443", "--set", f"e2e.webhookCABundle={bundle}")
    hooks = out.all("MutatingWebhookConfiguration") | out.all("ValidatingWebhookConfiguration")
    for name, (_service, path) in WEBHOOKS.items():
        (hook,) = hooks[name]["webhooks"]
        assert hook["clientConfig"] == {"url": f"https://127.0.0.1:8443{path}", "caBundle": bundle}
    config = out.get("ConfigMap", "linkerd-config")["data"]["values"]
    assert "127.0.0.1:8443" not in config
    assert bundle not in config


@BY_RELEASE
def test_install_method_cli_marks_objects_created_by_the_cli(render: Render, rel: FixtureRelease) -> None:
    """installMethod=cli makes every object and pod say linkerd.io/created-by: linkerd/cli <tag>."""
    out = render(rel, "--set", "installMethod=cli")
    expected = f"linkerd/cli {rel.version}"
    for doc in out.docs:
        assert doc["metadata"]["annotations"]["linkerd.io/created-by"] == expected
    for dep in out.all("Deployment").values():
        assert dep["spec"]["template"]["metadata"]["annotations"]["linkerd.io/created-by"] == expected
    crds = render(rel, "--set", "installMethod=cli", chart=CRDS)
    assert {d["metadata"]["annotations"]["linkerd.io/created-by"].split()[0] for d in crds.docs} == {"linkerd/cli"}


# --- linkerd-crds -----------------------------------------------------------------------------


@BY_RELEASE
def test_crds_chart_renders_the_release_crd_table(render: Render, rel: FixtureRelease) -> None:
    """The CRDs rendered (names, served versions, storage version, names block) equal release.crds."""
    out = render(rel, chart=CRDS)
    crds = out.all("CustomResourceDefinition")
    rendered = {
        (name, tuple(v["name"] for v in crd["spec"]["versions"] if v["served"]), storage)
        for name, crd in crds.items()
        for storage in [v["name"] for v in crd["spec"]["versions"] if v["storage"]]
    }
    assert rendered == {(c.name, c.versions, c.storage) for c in rel.default_crds}
    assert len(crds) == len(rel.default_crds)
    owners = {r.version for r in RELEASES if r.crds_chart == rel.crds_chart}
    for crd in rel.default_crds:
        doc = crds[crd.name]
        assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
        assert doc["spec"]["scope"] == "Namespaced"
        assert doc["spec"]["names"]["kind"] == crd.kind
        assert doc["spec"]["names"]["listKind"] == f"{crd.kind}List"
        assert doc["spec"]["names"]["singular"] == crd.kind.lower()
        assert doc["spec"]["names"]["plural"] == crd.plural
        assert doc["metadata"]["labels"]["helm.sh/chart"] == f"linkerd-crds-{rel.crds_chart}"
        assert doc["metadata"]["labels"]["linkerd.io/control-plane-ns"] == "linkerd"
        tool, tag = doc["metadata"]["annotations"]["linkerd.io/created-by"].split()
        assert tool == "linkerd/helm"
        assert tag in owners
        for version in doc["spec"]["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            assert schema == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        unserved = [v["name"] for v in doc["spec"]["versions"] if not v["served"]]
        assert tuple(unserved) == crd.unserved
        if crd.plural == "serverauthorizations":  # 2.12: saz only; 2.13 on: three short names
            expected = ["saz"] if rel.major <= 12 else ["saz", "serverauthz", "srvauthz"]
            assert doc["spec"]["names"]["shortNames"] == expected
        assert dict(crd.annotations).items() <= doc["metadata"]["annotations"].items()
        assert tuple(doc["spec"]["names"].get("categories", ())) == crd.categories


def test_servers_storage_version_moves_between_2_15_and_2_16(render: Render) -> None:
    """servers.policy.linkerd.io stores v1beta2 in edge-24.2.4 and v1beta3 in edge-24.8.2."""
    for version, storage in (("edge-24.2.4", "v1beta2"), ("edge-24.8.2", "v1beta3")):
        crd = render(release(version), chart=CRDS).get("CustomResourceDefinition", "servers.policy.linkerd.io")
        assert [v["name"] for v in crd["spec"]["versions"] if v["storage"]] == [storage]


# Gateway API CRDs per release, as linkerd-crds ships them at the tag
# (charts/linkerd-crds/templates/gateway.networking.k8s.io_*.yaml): plural -> (served, storage, not served).
_GW_14 = {"httproutes": (("v1beta1",), "v1beta1", ("v1alpha2",))}
_GW_16 = {"httproutes": (("v1alpha2", "v1beta1"), "v1beta1", ()), "grpcroutes": (("v1alpha2",), "v1alpha2", ())}
_GW_17 = _GW_16 | {"tlsroutes": (("v1alpha2",), "v1alpha2", ()), "tcproutes": (("v1alpha2",), "v1alpha2", ())}
_GW_18 = _GW_17 | {"httproutes": (("v1beta1", "v1"), "v1", ()), "grpcroutes": (("v1alpha2", "v1"), "v1", ())}
GATEWAY_API = {
    "stable-2.14.10": (_GW_14, "v0.7.1-dev", False),
    "edge-24.2.4": (_GW_14, "v0.7.1-dev", False),
    "edge-24.8.2": (_GW_16, "v0.7.1", False),
    "edge-24.11.8": (_GW_17, "v0.7.1", False),
    "edge-25.4.4": (_GW_18, "v1.1.1", True),
    "edge-25.10.7": (_GW_18, "v1.1.1", True),
    "edge-26.6.3": (_GW_18, "v1.1.1", True),
}


@pytest.mark.parametrize("version", list(GATEWAY_API))
def test_gateway_api_crds_are_the_ones_each_tag_ships(render: Render, version: str) -> None:
    """Names, served/unserved/storage versions, bundle version and keep policy of the Gateway API CRDs
    (rendered with installGatewayAPI=true where the chart has it off by default); the other 2.15/2.17 CRDs."""
    rel = release(version)
    table, bundle, keep = GATEWAY_API[version]
    out = render(rel, "--set", "installGatewayAPI=true", chart=CRDS)
    crds = out.all("CustomResourceDefinition")
    gateway = {n.split(".", 1)[0]: c for n, c in crds.items() if n.endswith(".gateway.networking.k8s.io")}
    assert set(gateway) == set(table)
    for plural, (served, storage, unserved) in table.items():
        doc = gateway[plural]
        versions = doc["spec"]["versions"]
        assert {v["name"] for v in versions if v["served"]} == set(served)
        assert [v["name"] for v in versions if v["storage"]] == [storage]
        assert [v["name"] for v in versions if not v["served"]] == list(unserved)
        ann = doc["metadata"]["annotations"]
        assert ann["gateway.networking.k8s.io/bundle-version"] == bundle
        assert ann["gateway.networking.k8s.io/channel"] == "experimental"
        assert (ann.get("helm.sh/resource-policy") == "keep") == keep
        assert doc["metadata"]["labels"] == {
            "helm.sh/chart": f"linkerd-crds-{rel.crds_chart}",
            "linkerd.io/control-plane-ns": "linkerd",
        }
        assert doc["spec"]["names"]["categories"] == ["gateway-api"]
    # The rest of what the chart added on the way: ExternalWorkload (2.15), EgressNetwork and
    # HTTPLocalRateLimitPolicy (2.17).
    ew = crds["externalworkloads.workload.linkerd.io"] if rel.major >= 15 else None
    if ew is not None:
        assert [v["name"] for v in ew["spec"]["versions"]] == ["v1alpha1", "v1beta1"]
    later = {"egressnetworks.policy.linkerd.io", "httplocalratelimitpolicies.policy.linkerd.io"}
    assert (later <= set(crds)) == (rel.major >= 17)


@pytest.mark.parametrize(
    ("version", "args", "expected"),
    [
        pytest.param("stable-2.14.10", (), {"httproutes"}, id="2.14 default"),
        pytest.param("stable-2.14.10", ("enableHttpRoutes=false",), set(), id="2.14 enableHttpRoutes off"),
        pytest.param(
            "edge-24.8.2",
            ("installGatewayAPI=false",),
            {"httproutes", "grpcroutes"},
            id="2.16 ignores installGatewayAPI",
        ),
        pytest.param(
            "edge-24.11.8", ("enableTlsRoutes=false",), {"httproutes", "grpcroutes", "tcproutes"}, id="2.17 per route"
        ),
        pytest.param("edge-25.4.4", (), {"httproutes", "grpcroutes", "tlsroutes", "tcproutes"}, id="2.18 default on"),
        pytest.param("edge-25.4.4", ("installGatewayAPI=false",), set(), id="2.18 installGatewayAPI off"),
        pytest.param(
            "edge-25.4.4", ("enableTcpRoutes=false",), {"httproutes", "grpcroutes", "tlsroutes"}, id="2.18 per route"
        ),
        pytest.param("edge-25.10.7", (), set(), id="2.19 default off"),
        pytest.param(
            "edge-25.10.7",
            ("installGatewayAPI=true",),
            {"httproutes", "grpcroutes", "tlsroutes", "tcproutes"},
            id="2.19 installGatewayAPI on",
        ),
        pytest.param(
            "edge-25.10.7", ("enableHttpRoutes=true",), {"httproutes", "grpcroutes"}, id="2.19 enableHttpRoutes wins"
        ),
        pytest.param(
            "edge-26.6.3",
            ("installGatewayAPI=true", "enableHttpRoutes=false"),
            {"tlsroutes", "tcproutes"},
            id="2.20 set key wins over install",
        ),
        pytest.param("edge-26.6.3", (), set(), id="2.20 default off"),
    ],
)
def test_gateway_api_crds_are_gated_on_the_real_values(
    render: Render, version: str, args: tuple[str, ...], expected: set[str]
) -> None:
    """enable*Routes alone up to 2.17; from 2.18 an enable*Routes key that is set wins, else installGatewayAPI
    (true in 2.18, false from 2.19) decides; httproutes and grpcroutes share enableHttpRoutes."""
    rel = release(version)
    set_args = [a for arg in args for a in ("--set", arg)]
    out = render(rel, *set_args, chart=CRDS)
    gateway = {
        n.split(".", 1)[0] for n in out.all("CustomResourceDefinition") if n.endswith(".gateway.networking.k8s.io")
    }
    assert gateway == expected


@BY_RELEASE
def test_crds_values_switch_the_gateway_api_as_each_major_does(built: Built, rel: FixtureRelease) -> None:
    """linkerd-crds values.yaml: enableHttpRoutes 2.14-2.16, plus enableTlsRoutes/enableTcpRoutes in 2.17,
    installGatewayAPI from 2.18 (true in 2.18, false from 2.19) with no enable*Routes key set."""
    values = yaml.safe_load((built.src(rel, CRDS) / "values.yaml").read_text())
    gates = {k: v for k, v in values.items() if k != "installMethod"}
    if rel.major < 14:
        assert gates == {}
    elif rel.major <= 16:
        assert gates == {"enableHttpRoutes": True}
    elif rel.major == 17:
        assert gates == {"enableHttpRoutes": True, "enableTlsRoutes": True, "enableTcpRoutes": True}
    else:
        assert gates == {"installGatewayAPI": rel.major == 18}


def test_foreign_gateway_api_chart_renders_newer_crds_without_linkerd_marks(built: Built, helm4: Path) -> None:
    """gateway-api-crds 1.2.1: the four route CRDs at bundle v1.2.1, httproutes/grpcroutes stored at v1,
    no Linkerd labels, no created-by, no keep policy."""
    src = foreign_gateway_api_source(built.out)
    proc = _helm(helm4, "template", "gateway-api", str(src), "-n", "gateway-system")
    assert proc.returncode == 0, proc.stderr
    crds = {d["metadata"]["name"]: d for d in _load_all(proc.stdout)}
    assert set(crds) == {
        f"{p}.gateway.networking.k8s.io" for p in ("httproutes", "grpcroutes", "tlsroutes", "tcproutes")
    }
    for doc in crds.values():
        meta = doc["metadata"]
        assert meta["annotations"]["gateway.networking.k8s.io/bundle-version"] == "v1.2.1"
        assert "helm.sh/resource-policy" not in meta["annotations"]
        assert "linkerd.io/created-by" not in meta["annotations"]
        assert "labels" not in meta
    http = crds["httproutes.gateway.networking.k8s.io"]["spec"]["versions"]
    assert {v["name"]: (v["served"], v["storage"]) for v in http} == {"v1beta1": (True, False), "v1": (True, True)}


# --- linkerd-viz ------------------------------------------------------------------------------


@BY_RELEASE
def test_viz_renders_namespace_and_injected_deployments(render: Render, helm_binary: Path, rel: FixtureRelease) -> None:
    """linkerd-viz renders its labelled namespace and five Deployments tagged with the release, marked for injection."""
    out = render(rel, chart=VIZ, namespace="linkerd-viz", helm=helm_binary)
    ns = out.get("Namespace", "linkerd-viz")
    assert ns["metadata"]["labels"]["linkerd.io/extension"] == "viz"
    assert ns["metadata"]["annotations"]["linkerd.io/inject"] == "enabled"
    registry, tag = "cr.l5d.io/linkerd", rel.version
    images = {
        "metrics-api": f"{registry}/metrics-api:{tag}",
        "tap": f"{registry}/tap:{tag}",
        "tap-injector": f"{registry}/tap:{tag}",
        "web": f"{registry}/web:{tag}",
        "prometheus": "prom/prometheus:v2.48.1",
    }
    deployments = out.all("Deployment")
    assert set(deployments) == set(images)
    accounts = set(out.all("ServiceAccount"))
    for name, dep in deployments.items():
        assert dep["metadata"]["namespace"] == "linkerd-viz"
        labels = dep["metadata"]["labels"]
        assert labels["linkerd.io/extension"] == "viz"
        assert labels["component"] == name
        assert labels["app.kubernetes.io/version"] == tag
        assert dep["metadata"]["annotations"]["linkerd.io/created-by"] == f"linkerd/helm {tag}"
        pod = dep["spec"]["template"]
        assert pod["metadata"]["annotations"]["linkerd.io/inject"] == "enabled"
        assert pod["spec"]["serviceAccountName"] == name
        assert name in accounts
        assert [c["image"] for c in pod["spec"]["containers"]] == [images[name]]


def test_viz_options_drop_prometheus_and_the_namespace(render: Render) -> None:
    """prometheus.enabled=false drops Prometheus; installNamespace=false drops the Namespace."""
    rel = release("stable-2.14.10")
    out = render(
        rel, "--set", "prometheus.enabled=false", "--set", "installNamespace=false", chart=VIZ, namespace="linkerd-viz"
    )
    assert "prometheus" not in out.all("Deployment")
    assert out.all("Namespace") == {}


# --- helm lint --------------------------------------------------------------------------------


@BY_RELEASE
def test_helm_lint_passes_for_every_chart_of_the_release(built: Built, helm_binary: Path, rel: FixtureRelease) -> None:
    """`helm lint --strict` passes for the release's charts, with the certificates from a values file."""
    dirs = [str(built.src(rel, chart)) for chart in (CP, CRDS, VIZ)]
    proc = _helm(helm_binary, "lint", "--strict", *dirs, "-f", str(built.certs))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 chart(s) linted, 0 chart(s) failed" in proc.stdout


# --- linkerd2 (the single chart before 2.12) --------------------------------------------------

LINKERD2_ONLY_DEPLOYMENTS_2_10 = {"linkerd-controller": "controller", "linkerd-sp-validator": "sp-validator"}


def _linkerd2_deployments(rel: FixtureRelease) -> dict[str, str]:
    return DEPLOYMENTS | (LINKERD2_ONLY_DEPLOYMENTS_2_10 if rel.major <= 10 else {})


@BY_LINKERD2
def test_linkerd2_renders_namespace_crds_and_control_plane_in_one_chart(
    render: Render, built: Built, helm_binary: Path, rel: FixtureRelease
) -> None:
    """One chart holds the namespace, the CRDs and the control plane; rendered for release namespace
    `default` (helm install without --namespace), every object still goes to the `namespace` value."""
    out = render(rel, chart=L2, namespace="default", helm=helm_binary)
    tag = rel.version
    ns = out.get("Namespace", "linkerd")
    assert ns["metadata"]["labels"] == {
        "linkerd.io/is-control-plane": "true",
        "config.linkerd.io/admission-webhooks": "disabled",
        "linkerd.io/control-plane-ns": "linkerd",
    }
    assert ns["metadata"]["annotations"] == {"linkerd.io/inject": "disabled"}
    for doc in out.docs:
        meta = doc["metadata"]
        if doc["kind"] not in {*CLUSTER_SCOPED, "Namespace", "CustomResourceDefinition"}:
            assert meta["namespace"] == "linkerd", (doc["kind"], meta["name"])
        if doc["kind"] != "Namespace":
            assert meta["annotations"]["linkerd.io/created-by"] == f"linkerd/helm {tag}", (doc["kind"], meta["name"])
    assert "namespace: default" not in out.text
    # The CRDs of the release, in the same chart: names, served and storage versions.
    crds = out.all("CustomResourceDefinition")
    rendered = {
        (name, tuple(v["name"] for v in crd["spec"]["versions"] if v["served"]), storage)
        for name, crd in crds.items()
        for storage in [v["name"] for v in crd["spec"]["versions"] if v["storage"]]
    }
    assert rendered == {(c.name, c.versions, c.storage) for c in rel.crds}
    expected_crds = {"serviceprofiles.linkerd.io": "v1alpha2", "trafficsplits.split.smi-spec.io": "v1alpha1"}
    if rel.major >= 11:
        expected_crds |= {"servers.policy.linkerd.io": "v1beta1", "serverauthorizations.policy.linkerd.io": "v1beta1"}
    assert {c.name: c.storage for c in rel.crds} == expected_crds
    for name, crd in crds.items():
        labels = crd["metadata"]["labels"]
        assert labels["linkerd.io/control-plane-ns"] == "linkerd"
        # Only the policy CRDs carried helm.sh/chart in Linkerd's linkerd2 chart.
        assert labels.get("helm.sh/chart") == (f"linkerd2-{rel.linkerd2_chart}" if "policy" in name else None)
    assert crds["trafficsplits.split.smi-spec.io"]["spec"]["names"]["shortNames"] == ["ts"]
    if rel.major >= 11:
        assert crds["serverauthorizations.policy.linkerd.io"]["spec"]["names"]["shortNames"] == ["saz"]
    # The control plane, meshed, tagged with the release.
    deployments = out.all("Deployment")
    assert {n: d["metadata"]["labels"]["linkerd.io/control-plane-component"] for n, d in deployments.items()} == (
        _linkerd2_deployments(rel)
    )
    for name, dep in deployments.items():
        assert dep["metadata"]["labels"]["app.kubernetes.io/version"] == tag
        assert dep["metadata"]["labels"]["linkerd.io/control-plane-ns"] == "linkerd"
        pod = dep["spec"]["template"]["metadata"]
        assert pod["labels"]["linkerd.io/proxy-deployment"] == name
        assert pod["annotations"]["linkerd.io/proxy-version"] == tag
        assert pod["annotations"]["linkerd.io/trust-root-sha256"] == built.identity.trust_root_sha256
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["labels"].items()
        assert _containers(dep)["linkerd-proxy"]["image"] == f"cr.l5d.io/linkerd/proxy:{tag}"
        init = _containers(dep, "initContainers")["linkerd-init"]
        assert init["image"] == f"cr.l5d.io/linkerd/proxy-init:{PROXY_INIT_VERSION[rel.major]}"
        assert init["resources"] == {
            "limits": {"cpu": "100m", "memory": "50Mi"},
            "requests": {"cpu": "10m", "memory": "10Mi"},
        }
        assert _pod_spec(dep)["nodeSelector"] == (
            {"beta.kubernetes.io/os": "linux"} if rel.major <= 10 else {"kubernetes.io/os": "linux"}
        )
        assert "strategy" not in dep["spec"]
    destination = {n: c["image"] for n, c in _containers(deployments["linkerd-destination"]).items()}
    controller = f"cr.l5d.io/linkerd/controller:{tag}"
    if rel.major >= 11:
        # 2.11 moved the SP validator into the destination pod and added the policy controller.
        assert destination == {
            "linkerd-proxy": f"cr.l5d.io/linkerd/proxy:{tag}",
            "destination": controller,
            "sp-validator": controller,
            "policy": f"cr.l5d.io/linkerd/policy-controller:{tag}",
        }
    else:
        assert destination == {"linkerd-proxy": f"cr.l5d.io/linkerd/proxy:{tag}", "destination": controller}
        assert _containers(deployments["linkerd-controller"])["public-api"]["image"] == controller
        assert _containers(deployments["linkerd-sp-validator"])["sp-validator"]["image"] == controller
    services = set(out.all("Service"))
    assert {"linkerd-dst", "linkerd-dst-headless", "linkerd-identity", "linkerd-sp-validator"} <= services
    assert ({"linkerd-policy", "linkerd-policy-validator"} <= services) == (rel.major >= 11)
    assert ("linkerd-controller-api" in services) == (rel.major <= 10)
    assert ("linkerd-identity-trust-roots" in out.all("ConfigMap")) == (rel.major >= 11)
    assert "linkerd-identity-issuer" in out.all("Secret")
    assert "CronJob" in {d["kind"] for d in out.docs}


@BY_LINKERD2
def test_linkerd2_values_have_the_keys_2_12_removed_or_renamed(built: Built, rel: FixtureRelease) -> None:
    """namespace, installNamespace and policyController.defaultAllowPolicy (2.11) exist; 2.12's
    proxy.defaultInboundPolicy, enablePodDisruptionBudget, highAvailability and deploymentStrategy do not."""
    values = yaml.safe_load((built.src(rel, L2) / "values.yaml").read_text())
    assert values["linkerdVersion"] == rel.version
    assert (values["namespace"], values["installNamespace"]) == ("linkerd", True)
    assert values["proxyInit"]["image"]["version"] == PROXY_INIT_VERSION[rel.major]
    assert values["webhookFailurePolicy"] == "Ignore"
    for absent in ("enablePodDisruptionBudget", "highAvailability", "deploymentStrategy", "enablePodAntiAffinity"):
        assert absent not in values, absent
    assert "defaultInboundPolicy" not in values["proxy"]
    assert "objectSelector" not in values["proxyInjector"]
    if rel.major >= 11:
        assert values["policyController"]["defaultAllowPolicy"] == "all-unauthenticated"
        assert values["identity"]["externalCA"] is False
        assert "crtExpiry" not in values["identity"]["issuer"]
        assert values["proxy"]["opaquePorts"] == "25,587,3306,4444,5432,6379,9300,11211"
    else:
        assert "policyController" not in values
        assert "policyValidator" not in values
        assert "crtExpiry" in values["identity"]["issuer"]
        assert values["identity"]["issuer"]["crtExpiry"] is None
        assert values["omitWebhookSideEffects"] is False
        assert values["proxy"]["opaquePorts"] == "25,443,587,3306,5432,11211"


@BY_LINKERD2
def test_linkerd2_config_holds_values_with_the_issuer_certificate_but_no_key(
    render: Render, built: Built, rel: FixtureRelease
) -> None:
    """linkerd-config (in the `namespace` value) has linkerdVersion, namespace, installNamespace; as in
    Linkerd's linkerd2 chart the issuer key is removed and the issuer certificate kept."""
    out = render(rel, chart=L2, namespace="default")
    cm = out.get("ConfigMap", "linkerd-config")
    assert cm["metadata"]["namespace"] == "linkerd"
    values = yaml.safe_load(cm["data"]["values"])
    assert values["linkerdVersion"] == rel.version
    assert (values["namespace"], values["installNamespace"]) == ("linkerd", True)
    assert values["identity"]["issuer"]["tls"] == {"crtPEM": built.identity.issuer_crt_pem}
    assert "keyPEM" not in cm["data"]["values"]
    assert "e2e" not in values
    assert "highAvailability" not in values
    assert "PRIVATE KEY" not in out.text
    secret = out.get("Secret", "linkerd-identity-issuer")
    assert base64.b64decode(secret["data"]["key.pem"]).decode() == built.identity.issuer_key_pem.strip()
    expiry = secret["metadata"]["annotations"].get("linkerd.io/identity-issuer-expiry")
    assert expiry == (issuer_expiry(built.identity.issuer_crt_pem) if rel.major <= 10 else None)


@BY_LINKERD2
def test_linkerd2_proxies_read_trust_anchors_and_policy_as_the_release_did(
    render: Render, built: Built, rel: FixtureRelease
) -> None:
    """2.11 proxies read the anchors from linkerd-identity-trust-roots and the default policy from
    policyController.defaultAllowPolicy; 2.10 proxies carry the anchors inline and have no policy."""
    out = render(rel, "--set", "policyController.defaultAllowPolicy=cluster-authenticated", chart=L2)
    dep = out.get("Deployment", "linkerd-identity")
    env = {e["name"]: e for e in _containers(dep)["linkerd-proxy"]["env"]}
    anchors = env["LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    if rel.major >= 11:
        assert anchors["valueFrom"]["configMapKeyRef"] == {
            "name": "linkerd-identity-trust-roots",
            "key": "ca-bundle.crt",
        }
        assert env["LINKERD2_PROXY_INBOUND_DEFAULT_POLICY"]["value"] == "cluster-authenticated"
        assert annotations["config.linkerd.io/default-inbound-policy"] == "cluster-authenticated"
        assert env["LINKERD2_PROXY_POLICY_SVC_ADDR"]["value"] == "linkerd-policy.linkerd.svc.cluster.local.:8090"
        policy = _containers(out.get("Deployment", "linkerd-destination"))["policy"]
        assert "--default-policy=cluster-authenticated" in policy["args"]
    else:
        assert anchors["value"].strip() == built.identity.trust_anchor_pem.strip()
        assert "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY" not in env
        assert "LINKERD2_PROXY_POLICY_SVC_ADDR" not in env
        assert "config.linkerd.io/default-inbound-policy" not in annotations


@BY_LINKERD2
def test_linkerd2_webhooks_skip_only_labelled_namespaces(render: Render, rel: FixtureRelease) -> None:
    """Up to 2.11 the webhooks' namespaceSelector skips only config.linkerd.io/admission-webhooks=disabled
    (kube-system is not skipped by name) and the injector has no objectSelector; the policy validator
    exists from 2.11 and validates servers and serverauthorizations."""
    out = render(rel, chart=L2)
    hooks = out.all("MutatingWebhookConfiguration") | out.all("ValidatingWebhookConfiguration")
    expected = set(WEBHOOKS) if rel.major >= 11 else set(WEBHOOKS) - {"linkerd-policy-validator-webhook-config"}
    assert set(hooks) == expected
    for name in expected:
        (hook,) = hooks[name]["webhooks"]
        service, _path = WEBHOOKS[name]
        assert hook["clientConfig"] == {"service": {"name": service, "namespace": "linkerd", "path": "/"}}
        assert hook["namespaceSelector"] == {
            "matchExpressions": [
                {"key": "config.linkerd.io/admission-webhooks", "operator": "NotIn", "values": ["disabled"]}
            ]
        }
        assert hook["failurePolicy"] == "Ignore"
    (injector,) = hooks["linkerd-proxy-injector-webhook-config"]["webhooks"]
    assert "objectSelector" not in injector
    if rel.major >= 11:
        (policy,) = hooks["linkerd-policy-validator-webhook-config"]["webhooks"]
        assert policy["rules"][0]["resources"] == ["serverauthorizations", "servers"]


@BY_LINKERD2
def test_linkerd2_e2e_webhook_url_and_cli_install_method(render: Render, rel: FixtureRelease) -> None:
    """The fixture-only switches work on linkerd2 too: webhooks by URL, created-by linkerd/cli."""
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\ntest\n-----END CERTIFICATE-----\n").decode()
    out = render(
        rel,
        "--set",
        "e2e.webhookURL=https://127.0.0.1:8443",
        "--set",
        f"e2e.webhookCABundle={bundle}",
        "--set",
        "installMethod=cli",
        chart=L2,
    )
    hooks = out.all("MutatingWebhookConfiguration") | out.all("ValidatingWebhookConfiguration")
    for name, hook in hooks.items():
        assert hook["webhooks"][0]["clientConfig"] == {
            "url": f"https://127.0.0.1:8443{WEBHOOKS[name][1]}",
            "caBundle": bundle,
        }
    for doc in out.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["annotations"]["linkerd.io/created-by"] == f"linkerd/cli {rel.version}"
    assert "127.0.0.1:8443" not in out.get("ConfigMap", "linkerd-config")["data"]["values"]


@BY_LINKERD2
@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("nothing", "Please provide the identity trust anchors"),
        ("anchors", "Please provide the identity issuer certificate expiry date"),
        ("anchors+expiry", "Please provide the identity issuer certificate"),
        ("anchors+expiry+crt", "Please provide the identity issue private key"),  # sic, Linkerd's message
    ],
)
def test_linkerd2_missing_certificates_fail_with_linkerd_messages(
    built: Built, helm4: Path, rel: FixtureRelease, given: str, message: str
) -> None:
    """Without certificates the linkerd2 chart fails with Linkerd's messages; only 2.10 asks for crtExpiry."""
    if rel.major >= 11 and "expiry date" in message:
        message = "Please provide the identity issuer certificate"
    args: list[str] = []
    if given != "nothing":
        args += ["-f", _anchors_only(built)]
    if "expiry" in given:
        args += ["--set-string", "identity.issuer.crtExpiry=2030-01-01T00:00:00Z"]
    if given.endswith("+crt"):
        args += ["--set-string", f"identity.issuer.tls.crtPEM={built.identity.issuer_crt_pem}"]
    proc = _helm(helm4, "template", L2, str(built.src(rel, L2)), *args)
    assert proc.returncode != 0, f"rendering unexpectedly succeeded with {args}"
    assert message in proc.stderr
    if message.endswith("certificate"):
        assert "expiry date" not in proc.stderr


@BY_LINKERD2
def test_linkerd2_values_ha_spreads_replicas_and_adds_pdbs_through_anti_affinity(
    render: Render, built: Built, helm_binary: Path, rel: FixtureRelease
) -> None:
    """The linkerd2 values-ha.yaml has no enablePodDisruptionBudget nor highAvailability: enablePodAntiAffinity
    brings the PDBs (2.10 also for the controller and the SP validator) and a one-pod-at-a-time rollout."""
    ha_file = built.src(rel, L2) / "values-ha.yaml"
    ha = yaml.safe_load(ha_file.read_text())
    assert (ha["controllerReplicas"], ha["enablePodAntiAffinity"], ha["webhookFailurePolicy"]) == (3, True, "Fail")
    assert "enablePodDisruptionBudget" not in ha
    assert "highAvailability" not in ha
    assert ("publicAPIResources" in ha) == (rel.major <= 10)
    out = render(rel, "-f", str(ha_file), chart=L2, helm=helm_binary)
    for name, component in _linkerd2_deployments(rel).items():
        dep = out.get("Deployment", name)
        assert dep["spec"]["replicas"] == 3
        assert dep["spec"]["strategy"] == {"rollingUpdate": {"maxUnavailable": 1}}
        (required,) = _pod_spec(dep)["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert required["topologyKey"] == "kubernetes.io/hostname"
        assert required["labelSelector"]["matchExpressions"][0]["values"] == [component]
    pdbs = out.all("PodDisruptionBudget")
    expected = PDBS | ({"linkerd-controller-api", "linkerd-sp-validator"} if rel.major <= 10 else set())
    assert set(pdbs) == expected
    assert {p["spec"]["maxUnavailable"] for p in pdbs.values()} == {1}
    hooks = out.all("MutatingWebhookConfiguration") | out.all("ValidatingWebhookConfiguration")
    assert {h["webhooks"][0]["failurePolicy"] for h in hooks.values()} == {"Fail"}
    assert "highAvailability" not in _config_values(out)
    assert "PodDisruptionBudget" not in {d["kind"] for d in render(rel, chart=L2).docs}


@BY_LINKERD2
def test_linkerd2_custom_namespace_and_no_namespace_object(render: Render, rel: FixtureRelease) -> None:
    """namespace=mesh moves everything there; installNamespace=false leaves the namespace to someone else."""
    out = render(rel, "--set", "namespace=mesh", "--set", "installNamespace=false", chart=L2)
    assert out.all("Namespace") == {}
    for doc in out.docs:
        if doc["kind"] not in {*CLUSTER_SCOPED, "CustomResourceDefinition"}:
            assert doc["metadata"]["namespace"] == "mesh", (doc["kind"], doc["metadata"]["name"])
    assert "linkerd-mesh-destination" in out.all("ClusterRole")
    assert {
        c["metadata"]["labels"]["linkerd.io/control-plane-ns"] for c in out.all("CustomResourceDefinition").values()
    } == {"mesh"}


def test_split_charts_of_2_12_can_adopt_every_2_11_object_but_the_namespace_and_trafficsplits(render: Render) -> None:
    """What a 2.11 -> 2.12 migration adopts: every object of the linkerd2 release reappears, same kind, name
    and namespace, in linkerd-crds 1.4.0 or linkerd-control-plane 1.9.8, with the same Deployment selectors
    (immutable) and the CRDs' storage versions kept; only the Namespace (no 2.12 chart makes it) and the SMI
    TrafficSplit CRD (moved to linkerd-smi) are left to no release."""
    old, new = release("stable-2.11.5"), release("stable-2.12.6")
    legacy = render(old, chart=L2, namespace="default")
    crds, cp = render(new, chart=CRDS), render(new)

    def keys(out: Rendered) -> set[tuple[str, str, str]]:
        return {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", "")) for d in out.docs}

    left = keys(legacy) - keys(crds) - keys(cp)
    assert left == {
        ("Namespace", "linkerd", ""),
        ("CustomResourceDefinition", "trafficsplits.split.smi-spec.io", ""),
    }
    for name, dep in legacy.all("Deployment").items():
        assert dep["spec"]["selector"] == cp.get("Deployment", name)["spec"]["selector"], name
    for name, crd in legacy.all("CustomResourceDefinition").items():
        if name in crds.all("CustomResourceDefinition"):
            target = crds.get("CustomResourceDefinition", name)
            served = [v["name"] for v in target["spec"]["versions"] if v["served"]]
            storage = [v["name"] for v in crd["spec"]["versions"] if v["storage"]]
            assert storage == [v["name"] for v in target["spec"]["versions"] if v["storage"]], name
            assert set(v["name"] for v in crd["spec"]["versions"]) <= set(served), name


@BY_LINKERD2
def test_helm_lint_passes_for_the_linkerd2_chart(built: Built, helm_binary: Path, rel: FixtureRelease) -> None:
    """`helm lint --strict` passes for the linkerd2 chart with the certificates from a values file."""
    proc = _helm(helm_binary, "lint", "--strict", str(built.src(rel, L2)), "-f", str(built.certs_for(rel)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


# --- linkerd-jaeger ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["stable-2.14.10", "edge-25.4.4"])
def test_jaeger_renders_its_extension_workloads(render: Render, version: str) -> None:
    """linkerd-jaeger (2.14-2.18): jaeger-injector, collector and jaeger Deployments labelled
    linkerd.io/extension=jaeger, injected; the namespace only with installNamespace (as the CLI does)."""
    rel = release(version)
    out = render(rel, chart=JAEGER, namespace="linkerd-jaeger")
    deployments = out.all("Deployment")
    assert set(deployments) == {"jaeger-injector", "collector", "jaeger"}
    for dep in deployments.values():
        assert dep["metadata"]["labels"]["linkerd.io/extension"] == "jaeger"
        assert dep["metadata"]["annotations"]["linkerd.io/created-by"] == f"linkerd/helm {rel.version}"
        assert dep["spec"]["template"]["metadata"]["annotations"]["linkerd.io/inject"] == "enabled"
    assert _containers(deployments["jaeger-injector"])["jaeger-injector"]["image"] == (
        f"cr.l5d.io/linkerd/jaeger-webhook:{rel.version}"
    )
    assert "Namespace" not in {d["kind"] for d in out.docs}
    ns = render(rel, "--set", "installNamespace=true", chart=JAEGER, namespace="linkerd-jaeger").get(
        "Namespace", "linkerd-jaeger"
    )
    assert ns["metadata"]["labels"] == {"linkerd.io/extension": "jaeger"}


def test_jaeger_is_offered_for_2_14_to_2_18_only() -> None:
    """The extension's chart ships with 2.14-2.18 at linkerd-viz's version; 2.19 removed it."""
    assert {r.version: r.jaeger_chart for r in RELEASES if r.jaeger_chart} == {
        "stable-2.14.9": "30.12.10",
        "stable-2.14.10": "30.12.11",
        "edge-24.2.4": "30.14.10-edge",
        "edge-24.8.2": "2024.8.2",
        "edge-24.11.8": "2024.11.8",
        "edge-25.4.4": "2025.4.4",
    }
