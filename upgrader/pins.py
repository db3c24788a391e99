"""Version pins: what keeps a component or a proxy off the version a hop installs.

Linkerd's injector gives a new pod the proxy named by the pod's
``config.linkerd.io/proxy-version`` annotation, else its namespace's, else the values'
``proxy.image.version``, else ``linkerdVersion``. A proxy container written into the pod
template with an image digest (manual injection) is never touched by the injector. Each of
these survives a restart: a gate waiting for the hop's version would wait in vain, and one
accepting an unreadable version would call an old proxy "passed". Image versions in the
control plane's user values pin its components the same way.

Everything here is pure: the planner and preflight find pins before anything changes, the
executor finds them again from what it observes at each wave. The spec's ``pins`` policy
decides what happens: ``refuse`` (default) plans nothing and names every pin; ``report``
upgrades the rest and reports each pinned workload as pinned, not upgraded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from upgrader.dataplane import digest_of, pods_by_namespace, pods_of
from upgrader.ports import Namespace, Pod, Workload

PROXY_VERSION = "config.linkerd.io/proxy-version"
PROXY_KEY = "proxy.image.version"
# Image versions a user may set in the control plane's values (each defaults to linkerdVersion).
# proxyInit.image.version is left out on purpose: the chart itself pins it.
VALUE_KEYS = (PROXY_KEY, "controllerImageVersion", "policyController.image.version", "debugContainer.image.version")
VALUES = "values"
TEMPLATE_ANNOTATION = f"pod template annotation {PROXY_VERSION}"
NAMESPACE_ANNOTATION = f"namespace annotation {PROXY_VERSION}"
DIGEST = "proxy image digest"


class Pin(BaseModel):
    """One pin: the object carrying it, where it comes from and the version (or digest) it holds."""

    model_config = ConfigDict(frozen=True)

    kind: str  # "values" (a release's user values) or the workload's kind
    namespace: str
    name: str  # the release or the workload
    source: str  # a values key, TEMPLATE_ANNOTATION, NAMESPACE_ANNOTATION or DIGEST
    version: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}"
        what = f"release {where}" if self.kind == VALUES else f"{self.kind} {where}"
        return f"{what}: {self.source} = {self.version}"

    @property
    def remedy(self) -> str:
        """What removes the pin."""
        if self.kind == VALUES:
            return f"unset {self.source} in the release's values (or override it in the spec's values.overrides)"
        if self.source == TEMPLATE_ANNOTATION:
            return f"remove the {PROXY_VERSION} annotation from {self.kind} {self.namespace}/{self.name}'s pod template"
        if self.source == NAMESPACE_ANNOTATION:
            return f"remove the {PROXY_VERSION} annotation from namespace {self.namespace}"
        where = f"{self.kind} {self.namespace}/{self.name}"
        return f"re-inject {where} with a tagged proxy image (or let the injector add the proxy)"


def _dig(values: Mapping[str, Any], dotted: str) -> Any:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        old = out.get(key)
        out[key] = _merged(old, value) if isinstance(value, Mapping) and isinstance(old, Mapping) else value
    return out


def value_pins(
    values: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    release: str,
    namespace: str,
    targets: Sequence[str],
) -> list[Pin]:
    """Image versions in the user values (with the spec's overrides) that differ from a hop's target."""
    merged = _merged(values, overrides)
    out = []
    for key in VALUE_KEYS:
        value = _dig(merged, key)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value).strip():
            text = str(value).strip()
            if any(text != t for t in targets):
                out.append(Pin(kind=VALUES, namespace=namespace, name=release, source=key, version=text))
    return out


def values_proxy(pins: Iterable[Pin]) -> str | None:
    """The proxy version the values pin every injected proxy to (None when they do not)."""
    return next((p.version for p in pins if p.kind == VALUES and p.source == PROXY_KEY), None)


def proxy_pin(
    workload: Workload,
    namespace: Namespace | None,
    pods: Iterable[Pod],
    *,
    values_version: str | None = None,
) -> Pin | None:
    """What fixes ``workload``'s proxy whatever the control plane runs (None: it follows the control plane).

    In the injector's order, after a digest written into the pods (which the injector never
    replaces): the pod template's annotation, the namespace's, the values' proxy version.
    """
    key = {"kind": workload.kind, "namespace": workload.namespace, "name": workload.name}
    digests = sorted({d for p in pods_of(workload, pods) if (d := digest_of(p)) is not None})
    if digests:
        return Pin(**key, source=DIGEST, version=", ".join(digests))
    if template := workload.pod_annotations.get(PROXY_VERSION, "").strip():
        return Pin(**key, source=TEMPLATE_ANNOTATION, version=template)
    if namespace is not None and (ns := namespace.annotations.get(PROXY_VERSION, "").strip()):
        return Pin(**key, source=NAMESPACE_ANNOTATION, version=ns)
    if values_version:
        return Pin(**key, source=f"{VALUES} {PROXY_KEY}", version=values_version)
    return None


def workload_pins(
    workloads: Iterable[Workload],
    namespaces: Iterable[Namespace],
    pods: Sequence[Pod],
    *,
    targets: Sequence[str],
    values_version: str | None = None,
) -> list[Pin]:
    """The workloads whose proxy a restart would not bring to every one of ``targets`` (a digest: never)."""
    spaces = {n.name: n for n in namespaces}
    by_namespace = pods_by_namespace(pods)  # each workload scans its namespace's pods, not all of them
    out = []
    for w in workloads:
        pin = proxy_pin(w, spaces.get(w.namespace), by_namespace.get(w.namespace, ()), values_version=values_version)
        if pin is not None and (pin.source == DIGEST or any(pin.version != t for t in targets)):
            out.append(pin)
    return out


def describe(pins: Sequence[Pin], *, limit: int = 10) -> str:
    """The pins as one line (the first ``limit``)."""
    text = "; ".join(str(p) for p in pins[:limit])
    return text + (f" (and {len(pins) - limit} more)" if len(pins) > limit else "")


def remedies(pins: Sequence[Pin], *, limit: int = 5) -> str:
    """How to remove them, or carry on and report them."""
    fixes = list(dict.fromkeys(p.remedy for p in pins))
    text = "; ".join(fixes[:limit]) + ("; ..." if len(fixes) > limit else "")
    return f"{text}; or set `pins: report` in the spec to upgrade the rest and report these as pinned"
