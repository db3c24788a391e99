"""Discovery turns a few observations into an Installation."""

from __future__ import annotations

import pytest

from tests.fakes import FakeHelm, FakeKube
from upgrader.discovery import HA_DEPLOYMENTS, UNKNOWN, detect_ha, observe, proxy_version
from upgrader.ports import Budget, Container, HelmRelease, Pod, Workload

APP = Container("app", "registry.example/app:1")


def _pod(
    ns: str = "shop",
    *,
    containers: tuple[Container, ...] = (),
    init: tuple[Container, ...] = (),
    annotations: dict[str, str] | None = None,
) -> Pod:
    return Pod(
        namespace=ns,
        name="p",
        labels={"linkerd.io/control-plane-ns": "linkerd"},
        annotations=annotations or {},
        containers=(APP, *containers),
        init_containers=init,
    )


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        pytest.param(
            _pod(containers=(Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:stable-2.14.10"),)),
            "stable-2.14.10",
            id="proxy version is the image tag",
        ),
        pytest.param(
            _pod(containers=(Container("linkerd-proxy", "localhost:5000/proxy:edge-24.8.2"),)),
            "edge-24.8.2",
            id="a registry port is not mistaken for a tag",
        ),
        pytest.param(
            _pod(init=(Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:edge-26.6.3", "Always"),)),
            "edge-26.6.3",
            id="native sidecar init container counts as the proxy",
        ),
        pytest.param(
            _pod(init=(Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:edge-26.6.3", None),)),
            None,
            id="an init container without restartPolicy Always is not a proxy",
        ),
        pytest.param(
            _pod(containers=(Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy@sha256:abc"),)),
            UNKNOWN,
            id="digest-pinned proxy without annotation is unknown",
        ),
        pytest.param(
            _pod(
                containers=(Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy@sha256:abc"),),
                annotations={"linkerd.io/proxy-version": "stable-2.13.7"},
            ),
            "stable-2.13.7",
            id="digest-pinned proxy falls back to the injector annotation",
        ),
        pytest.param(_pod(), None, id="pod without proxy is unmeshed"),
    ],
)
def test_proxy_version(pod: Pod, expected: str | None) -> None:
    """The proxy version is read from the proxy container's image, then the annotation."""
    assert proxy_version(pod) == expected


def test_observe_finds_control_plane_in_the_release_namespace() -> None:
    """linkerd-config is read from the namespace of the linkerd-control-plane release."""
    kube = FakeKube(
        config_maps={("mesh", "linkerd-config"): {"values": "linkerdVersion: edge-24.8.2\nhighAvailability: true\n"}},
        pods=[
            _pod("a", containers=(Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:edge-24.8.2"),)),
            _pod("a", containers=(Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:edge-24.2.4"),)),
            _pod("b", containers=(Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:edge-24.8.2"),)),
        ],
    )
    helm = FakeHelm(
        releases=[
            HelmRelease(
                "linkerd-control-plane", "mesh", 4, "deployed", "linkerd-control-plane", "2024.8.2", "edge-24.8.2"
            ),
            HelmRelease("linkerd-crds", "mesh", 2, "deployed", "linkerd-crds", "2024.8.2"),
            HelmRelease("grafana", "monitoring", 1, "deployed", "grafana", "8.0.0"),
        ]
    )
    found = observe(kube, helm)
    assert found.control_plane_namespace == "mesh"
    assert found.control_plane_version == "edge-24.8.2"
    assert found.high_availability is True
    assert [r.name for r in found.releases] == ["linkerd-control-plane", "linkerd-crds"]
    assert found.proxies == {"a": {"edge-24.2.4": 1, "edge-24.8.2": 1}, "b": {"edge-24.8.2": 1}}
    assert sum(c.startswith("list_pods") for c in kube.calls) == 1, "one cluster-wide pod list, not per namespace"


def test_observe_without_linkerd_finds_nothing() -> None:
    """A cluster with no release, no linkerd-config and no proxies reports nothing found."""
    found = observe(FakeKube(pods=[Pod("default", "x", containers=(APP,))]), FakeHelm())
    assert not found.found
    assert found.control_plane_version is None
    assert found.as_dict()["proxies"] == {}


def test_observe_defaults_to_the_linkerd_namespace_for_cli_installs() -> None:
    """Without a Helm release, linkerd-config is looked up in the linkerd namespace."""
    kube = FakeKube(config_maps={("linkerd", "linkerd-config"): {"values": "linkerdVersion: stable-2.12.6\n"}})
    found = observe(kube, FakeHelm())
    assert (found.control_plane_namespace, found.control_plane_version) == ("linkerd", "stable-2.12.6")


def test_observe_prefers_the_default_namespace_when_two_control_planes_exist() -> None:
    """A leftover control-plane release elsewhere (say, in a namespace being deleted) does not win over linkerd."""
    kube = FakeKube(
        config_maps={
            ("leftover", "linkerd-config"): {"values": "linkerdVersion: stable-2.14.10\n"},
            ("linkerd", "linkerd-config"): {"values": "linkerdVersion: stable-2.13.7\n"},
        }
    )
    helm = FakeHelm(
        releases=[
            HelmRelease("linkerd-control-plane", "leftover", 1, "deployed", "linkerd-control-plane", "1.16.11"),
            HelmRelease("linkerd-control-plane", "linkerd", 1, "deployed", "linkerd-control-plane", "1.12.7"),
        ]
    )
    found = observe(kube, helm)
    assert (found.control_plane_namespace, found.control_plane_version) == ("linkerd", "stable-2.13.7")


def test_completed_job_pods_are_not_data_plane_proxies() -> None:
    """A Job's pod that finished on the old proxy is not a proxy to upgrade (no endless catch-up hop)."""
    proxy = Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:stable-2.13.7")
    old = Container("linkerd-proxy", "cr.l5d.io/linkerd/proxy:stable-2.12.6")
    meshed = {"linkerd.io/control-plane-ns": "linkerd"}
    pods = [
        Pod("shop", "web-1", labels=meshed, containers=(APP, proxy), phase="Running"),
        Pod("shop", "job-1", labels=meshed, containers=(APP, old), phase="Succeeded", owner_kind="Job", owner_name="j"),
        Pod("shop", "job-2", labels=meshed, containers=(APP, old), phase="Failed", owner_kind="Job", owner_name="j"),
    ]
    found = observe(FakeKube(pods=pods), FakeHelm())
    assert found.proxies == {"shop": {"stable-2.13.7": 1}}


COMPONENT = "linkerd.io/control-plane-component"


def _deployments(replicas: int = 3, *, anti_affinity: bool = False, namespace: str = "linkerd") -> list[Workload]:
    return [
        Workload(
            "Deployment",
            namespace,
            name,
            replicas,
            pod_labels={COMPONENT: name.removeprefix("linkerd-"), "linkerd.io/control-plane-ns": namespace},
            required_anti_affinity=anti_affinity,
        )
        for name in HA_DEPLOYMENTS
    ]


def _budgets(namespace: str = "linkerd") -> list[Budget]:
    return [Budget(namespace, f"pdb-{n}", {COMPONENT: n.removeprefix("linkerd-")}, 1) for n in HA_DEPLOYMENTS]


@pytest.mark.parametrize(
    ("values", "workloads", "budgets", "ha"),
    [
        pytest.param({"highAvailability": True}, [], [], True, id="the 2.14+ highAvailability flag is HA"),
        pytest.param({}, _deployments(3), _budgets(), True, id="2.12/2.13 values-ha: 3 replicas and PDBs, no flag"),
        pytest.param({}, _deployments(3, anti_affinity=True), [], True, id="3 replicas with required anti-affinity"),
        pytest.param({}, _deployments(3), [], False, id="replicas alone (no PDB, no anti-affinity) are not HA"),
        pytest.param({}, _deployments(1), _budgets(), False, id="single replicas are not HA even with PDBs"),
        pytest.param(
            {},
            [*_deployments(3)[:2], _deployments(1)[2]],
            _budgets(),
            False,
            id="one single-replica deployment is not HA",
        ),
        pytest.param({}, _deployments(3)[:2], _budgets(), False, id="a missing control-plane deployment is not HA"),
        pytest.param(
            {}, _deployments(3, namespace="other"), _budgets("other"), False, id="another namespace's deployments"
        ),
        pytest.param({"highAvailability": False}, _deployments(1), [], False, id="a plain install"),
    ],
)
def test_detect_ha(values: dict[str, object], workloads: list[Workload], budgets: list[Budget], ha: bool) -> None:
    """HA is the flag where it exists, else >1 replica of every control-plane deployment with a PDB or anti-affinity."""
    found, evidence = detect_ha(values, workloads, budgets, "linkerd")
    assert found is ha
    assert evidence, "the verdict always comes with its evidence"


def test_ha_evidence_names_replicas_budgets_affinity_and_the_failure_policy() -> None:
    """The evidence says what was seen, per deployment."""
    _, evidence = detect_ha(
        {"webhookFailurePolicy": "Fail"}, _deployments(3, anti_affinity=True), _budgets(), "linkerd"
    )
    assert evidence == (
        "linkerd-destination wants 3 replica(s) with PDB pdb-linkerd-destination, required pod anti-affinity",
        "linkerd-identity wants 3 replica(s) with PDB pdb-linkerd-identity, required pod anti-affinity",
        "linkerd-proxy-injector wants 3 replica(s) with PDB pdb-linkerd-proxy-injector, required pod anti-affinity",
        "webhookFailurePolicy: Fail",
    )


def test_observe_recognises_ha_2_13_without_the_flag() -> None:
    """HA 2.13 (no highAvailability in linkerd-config) is HA from its deployments and PDBs; shown in as_dict."""
    kube = FakeKube(
        config_maps={("linkerd", "linkerd-config"): {"values": "linkerdVersion: stable-2.13.7\n"}},
        workloads=[*_deployments(3), *_deployments(1, namespace="elsewhere")],
        budgets=_budgets(),
    )
    found = observe(kube, FakeHelm())
    assert found.high_availability is True
    control_plane = found.as_dict()["control_plane"]
    assert control_plane["high_availability"] is True
    assert any("PDB pdb-linkerd-identity" in e for e in control_plane["high_availability_evidence"])
    assert {"list_workloads linkerd", "list_budgets linkerd"} <= set(kube.calls), "read in the control plane only"


def test_observe_without_a_control_plane_reads_no_workloads() -> None:
    """No linkerd-config: nothing to judge for HA, no workload or budget list."""
    kube = FakeKube(workloads=_deployments(3), budgets=_budgets())
    found = observe(kube, FakeHelm())
    assert (found.high_availability, found.ha_evidence) == (False, ())
    assert not any(c.startswith(("list_workloads", "list_budgets")) for c in kube.calls)
