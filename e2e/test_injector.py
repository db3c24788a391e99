"""The fixture injector's decisions, checked by applying its JSONPatch (pure; no cluster)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from e2e.fixtures.injector import MeshConfig, inject, owner_label

ANCHOR = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
CFG = MeshConfig(
    "linkerd",
    {
        "linkerdVersion": "stable-2.14.10",
        "proxy": {"image": {"version": ""}},
        "proxyInit": {"image": {"name": "cr.l5d.io/linkerd/proxy-init", "version": "v2.2.3"}},
    },
    ANCHOR,
)


def _apply(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply JSONPatch "add" operations the way the API server does."""
    out = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] == "add"
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), op["value"])
        else:
            node[last] = op["value"]
    return out


def _pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "generateName": "web-7d9f-",
        "labels": {"app": "web", "pod-template-hash": "7d9f"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9f", "controller": True}],
    }
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": {"containers": [{"name": "web", "image": "app:1"}], **spec}}


def _names(containers: list[dict[str, Any]]) -> list[str]:
    return [c["name"] for c in containers]


def test_namespace_opt_in_meshes_the_pod_with_linkerd_version() -> None:
    """A pod in an injected namespace gets linkerd-init, linkerd-proxy at linkerdVersion, labels and annotations."""
    ops = inject(_pod(), "shop", {"linkerd.io/inject": "enabled"}, CFG)
    assert ops is not None
    pod = _apply(_pod(), ops)
    assert _names(pod["spec"]["containers"]) == ["web", "linkerd-proxy"]
    assert pod["spec"]["containers"][1]["image"] == "cr.l5d.io/linkerd/proxy:stable-2.14.10"
    assert pod["spec"]["initContainers"] == [
        {
            "name": "linkerd-init",
            "image": "cr.l5d.io/linkerd/proxy-init:v2.2.3",
            "args": ["--incoming-proxy-port", "4143"],
        }
    ]
    assert pod["metadata"]["labels"] == {
        "app": "web",
        "pod-template-hash": "7d9f",
        "linkerd.io/control-plane-ns": "linkerd",
        "linkerd.io/workload-ns": "shop",
        "linkerd.io/proxy-deployment": "web",
    }
    assert pod["metadata"]["annotations"] == {
        "linkerd.io/proxy-version": "stable-2.14.10",
        "linkerd.io/created-by": "linkerd/proxy-injector stable-2.14.10",
        "linkerd.io/trust-root-sha256": hashlib.sha256(ANCHOR.encode()).hexdigest(),
        "linkerd.io/identity-mode": "default",
    }


@pytest.mark.parametrize(
    ("pod_ann", "ns_ann", "meshed"),
    [
        pytest.param({}, {}, False, id="no opt-in anywhere is not meshed"),
        pytest.param(
            {"linkerd.io/inject": "disabled"},
            {"linkerd.io/inject": "enabled"},
            False,
            id="pod opt-out beats namespace opt-in",
        ),
        pytest.param({"linkerd.io/inject": "enabled"}, {}, True, id="pod opt-in without namespace opt-in"),
        pytest.param({"linkerd.io/inject": "ingress"}, {}, True, id="ingress mode is meshed"),
        pytest.param({}, {"linkerd.io/inject": "disabled"}, False, id="namespace disabled"),
    ],
)
def test_opt_in_rules(pod_ann: dict[str, str], ns_ann: dict[str, str], meshed: bool) -> None:
    """Injection follows linkerd.io/inject on the pod first, then on the namespace."""
    assert (inject(_pod(pod_ann), "ns", ns_ann, CFG) is not None) is meshed


@pytest.mark.parametrize(
    ("pod_ann", "ns_ann", "values", "expected"),
    [
        pytest.param(
            {"config.linkerd.io/proxy-version": "edge-24.8.2"},
            {},
            {},
            "edge-24.8.2",
            id="pod annotation overrides everything",
        ),
        pytest.param(
            {},
            {"config.linkerd.io/proxy-version": "stable-2.13.7"},
            {},
            "stable-2.13.7",
            id="namespace annotation overrides the config",
        ),
        pytest.param(
            {},
            {},
            {"proxy": {"image": {"version": "stable-2.14.9"}}},
            "stable-2.14.9",
            id="proxy.image.version overrides linkerdVersion",
        ),
        pytest.param({}, {}, {}, "stable-2.14.10", id="linkerdVersion is the default"),
    ],
)
def test_proxy_version_rule(
    pod_ann: dict[str, str], ns_ann: dict[str, str], values: dict[str, Any], expected: str
) -> None:
    """The proxy version: annotation override, then proxy.image.version, then linkerdVersion."""
    cfg = MeshConfig("linkerd", {**CFG.values, **values}, ANCHOR)
    ops = inject(_pod({"linkerd.io/inject": "enabled", **pod_ann}), "ns", ns_ann, cfg)
    assert ops is not None
    pod = _apply(_pod({"linkerd.io/inject": "enabled", **pod_ann}), ops)
    assert pod["spec"]["containers"][-1]["image"] == f"cr.l5d.io/linkerd/proxy:{expected}"
    assert pod["metadata"]["annotations"]["linkerd.io/proxy-version"] == expected


def test_native_sidecar_puts_the_proxy_among_init_containers() -> None:
    """With proxy.nativeSidecar the proxy is an init container with restartPolicy Always, after linkerd-init."""
    cfg = MeshConfig("linkerd", {**CFG.values, "proxy": {"nativeSidecar": True}}, ANCHOR)
    original = _pod(initContainers=[{"name": "migrate", "image": "m:1"}])
    ops = inject(original, "ns", {"linkerd.io/inject": "enabled"}, cfg)
    assert ops is not None
    pod = _apply(original, ops)
    assert _names(pod["spec"]["initContainers"]) == ["linkerd-init", "linkerd-proxy", "migrate"]
    assert pod["spec"]["initContainers"][1]["restartPolicy"] == "Always"
    assert _names(pod["spec"]["containers"]) == ["web"]


def test_already_meshed_and_no_control_plane_are_left_alone() -> None:
    """A pod that has a proxy, or a cluster without linkerd-config, gets no patch."""
    meshed = _pod({"linkerd.io/inject": "enabled"})
    meshed["spec"]["containers"].append({"name": "linkerd-proxy", "image": "cr.l5d.io/linkerd/proxy:x"})
    assert inject(meshed, "ns", {}, CFG) is None
    assert inject(_pod({"linkerd.io/inject": "enabled"}), "ns", {}, None) is None


@pytest.mark.parametrize(
    ("owner", "labels", "expected"),
    [
        pytest.param(
            {"kind": "ReplicaSet", "name": "web-7d9f"},
            {"pod-template-hash": "7d9f"},
            ("linkerd.io/proxy-deployment", "web"),
            id="deployment pods name the deployment",
        ),
        pytest.param(
            {"kind": "StatefulSet", "name": "db"}, {}, ("linkerd.io/proxy-statefulset", "db"), id="statefulset"
        ),
        pytest.param(
            {"kind": "DaemonSet", "name": "agent"}, {}, ("linkerd.io/proxy-daemonset", "agent"), id="daemonset"
        ),
        pytest.param({"kind": "Job", "name": "report-1"}, {}, ("linkerd.io/proxy-job", "report-1"), id="job"),
    ],
)
def test_owner_label(owner: dict[str, str], labels: dict[str, str], expected: tuple[str, str]) -> None:
    """The linkerd.io/proxy-<kind> label names the pod's workload."""
    assert owner_label({"metadata": {"ownerReferences": [owner], "labels": labels}}) == expected


# 2.20's linkerd-config, as the fixture chart renders it: native sidecars on, no proxyInit.image, nft.
CFG_2_20 = MeshConfig(
    "linkerd",
    {
        "linkerdVersion": "edge-26.6.3",
        "proxy": {"image": {"name": "cr.l5d.io/linkerd/proxy", "version": ""}, "nativeSidecar": True},
        "proxyInit": {"iptablesMode": "nft"},
    },
    ANCHOR,
)


def test_2_20_config_injects_native_sidecars_with_the_proxy_image_for_linkerd_init() -> None:
    """2.20: linkerd-init (proxy image, proxy-init command, nft) then linkerd-proxy (restartPolicy Always)
    go first among the init containers; the app containers are left as they were."""
    original = _pod(initContainers=[{"name": "migrate", "image": "m:1"}])
    ops = inject(original, "shop", {"linkerd.io/inject": "enabled"}, CFG_2_20)
    assert ops is not None
    pod = _apply(original, ops)
    init, proxy, migrate = pod["spec"]["initContainers"]
    assert (init["name"], proxy["name"], migrate["name"]) == ("linkerd-init", "linkerd-proxy", "migrate")
    assert init["image"] == proxy["image"] == "cr.l5d.io/linkerd/proxy:edge-26.6.3"
    assert init["command"] == ["/usr/lib/linkerd/linkerd2-proxy-init"]
    assert init["args"][:4] == ["--firewall-bin-path", "iptables-nft", "--firewall-save-bin-path", "iptables-nft-save"]
    assert "restartPolicy" not in init
    assert proxy["restartPolicy"] == "Always"
    assert _names(pod["spec"]["containers"]) == ["web"]
    assert pod["metadata"]["annotations"]["linkerd.io/proxy-version"] == "edge-26.6.3"


def test_native_sidecar_annotation_overrides_the_config_both_ways() -> None:
    """The pod's (or namespace's) proxy-enable-native-sidecar annotation wins over proxy.nativeSidecar."""
    off = _pod({"config.alpha.linkerd.io/proxy-enable-native-sidecar": "false"})
    ops = inject(off, "shop", {"linkerd.io/inject": "enabled"}, CFG_2_20)
    assert ops is not None
    pod = _apply(off, ops)
    assert _names(pod["spec"]["initContainers"]) == ["linkerd-init"]
    assert _names(pod["spec"]["containers"]) == ["web", "linkerd-proxy"]
    assert "restartPolicy" not in pod["spec"]["containers"][1]
    ns_on = {"linkerd.io/inject": "enabled", "config.alpha.linkerd.io/proxy-enable-native-sidecar": "true"}
    ops = inject(_pod(), "shop", ns_on, CFG)
    assert ops is not None
    pod = _apply(_pod(), ops)
    assert _names(pod["spec"]["initContainers"]) == ["linkerd-init", "linkerd-proxy"]
    assert pod["spec"]["initContainers"][0]["image"] == "cr.l5d.io/linkerd/proxy-init:v2.2.3"


def test_regular_sidecar_before_2_20_keeps_the_proxy_init_image_and_legacy_iptables() -> None:
    """A 2.19 config (nativeSidecar false, proxyInit.image present, nft): regular proxy container,
    linkerd-init from proxyInit.image with the nft binaries; legacy mode adds no firewall flags."""
    values = {
        "linkerdVersion": "edge-25.10.7",
        "proxy": {"image": {"version": ""}, "nativeSidecar": False},
        "proxyInit": {"image": {"name": "cr.l5d.io/linkerd/proxy-init", "version": "v2.4.3"}, "iptablesMode": "nft"},
    }
    ops = inject(_pod(), "shop", {"linkerd.io/inject": "enabled"}, MeshConfig("linkerd", values, ANCHOR))
    assert ops is not None
    pod = _apply(_pod(), ops)
    (init,) = pod["spec"]["initContainers"]
    assert init["image"] == "cr.l5d.io/linkerd/proxy-init:v2.4.3"
    assert "command" not in init
    assert "iptables-nft" in init["args"]
    assert _names(pod["spec"]["containers"]) == ["web", "linkerd-proxy"]
    legacy = _apply(_pod(), inject(_pod(), "shop", {"linkerd.io/inject": "enabled"}, CFG) or [])
    assert "--firewall-bin-path" not in legacy["spec"]["initContainers"][0]["args"]
